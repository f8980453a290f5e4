package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestGuestSysfsWriteCallbacks is issue 12's deadlock: a guest-side sysfs
// write to a patch with callbacks. The host handles the guest's
// sysfs-write event by enabling the patch, which runs pre_patch and
// post_patch in the guest through guest-call while the write (a
// guest-exec, or a guest-file-write from the host) is still waiting for
// the host's answer. Both ways must complete, run the callbacks, and
// leave the state the writer was told.
func TestGuestSysfsWriteCallbacks(t *testing.T) {
	s := boot(t, 2)
	// The boot handshake may leave a late ping reply behind; count from here.
	unmatched0 := s.Agent.Stats().Unmatched
	p, err := s.Manager.Register(obj(t, "livepatch-callbacks"), "livepatch-callbacks.o")
	if err != nil {
		t.Fatal(err)
	}
	enabled := "/sys/kernel/livepatch/" + p.Name + "/enabled"
	enabledNow := func() bool {
		for _, ps := range s.Manager.Status().Patches {
			if ps.Name == p.Name {
				return ps.Enabled
			}
		}
		t.Fatalf("patch %s gone", p.Name)
		return false
	}

	// A guest process writes: guest-exec waits on the write, which waits
	// on the host, which runs pre_patch/post_patch with guest-call.
	t0 := time.Now()
	sh(t, s, "echo 1 > "+enabled)
	t.Logf("guest-exec write enabled the patch in %v", time.Since(t0).Round(time.Millisecond))
	if !enabledNow() {
		t.Fatal("the guest's write succeeded but the patch is not enabled")
	}
	if out := sh(t, s, "cat /proc/cmdline"); !strings.Contains(out, "pre_patch=1 post_patch=1") {
		t.Fatalf("callbacks after the guest's enable: %q", out)
	}
	if got := strings.TrimSpace(sh(t, s, "cat "+enabled)); got != "1" {
		t.Fatalf("guest reads enabled=%q", got)
	}

	// The host writes through the agent (the API's /guest/file/write).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 = time.Now()
	if err := s.Agent.FileWrite(ctx, enabled, "0\n"); err != nil {
		t.Fatalf("guest-file-write disable: %v", err)
	}
	t.Logf("guest-file-write disabled the patch in %v", time.Since(t0).Round(time.Millisecond))
	if enabledNow() {
		t.Fatal("the write succeeded but the patch is still enabled")
	}
	if got := strings.TrimSpace(sh(t, s, "cat "+enabled)); got != "0" {
		t.Fatalf("guest reads enabled=%q", got)
	}
	// And once more each way: nothing left behind in either queue.
	if err := s.Agent.FileWrite(ctx, enabled, "1"); err != nil {
		t.Fatalf("guest-file-write enable: %v", err)
	}
	sh(t, s, "echo 0 > "+enabled)
	if enabledNow() {
		t.Fatal("patch enabled after the last disable")
	}
	if n := s.Agent.Stats().Unmatched - unmatched0; n != 0 {
		t.Fatalf("%d unmatched agent replies", n)
	}
}
