package linux

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/internal/poll"
	"klp-kvm/kvm/agent"
)

// guestWait bounds each wait for a guest-initiated write to take effect
// (the agent's event, the host's switch, the tree's push: a few hundred
// milliseconds in the nested tier, seconds when it is loaded).
const guestWait = 60 * time.Second

// TestLinuxSysfs: the guest sees its live patches. After the host loads
// livepatch-sample.ko, the guest's agent shows the tree of Linux's
// /sys/kernel/livepatch under /run/klp-kvm/livepatch, the same as the
// API's read (`klp-kvm sysfs cat`); `echo 0 >` and `echo 1 >` to its
// enabled file inside the guest disable and enable the patch (host and
// /proc/cmdline agree); writes Linux refuses are undone in the file and
// logged in the guest's kernel log; a write through the API returns its
// errno; unloading removes the patch's directory; Linux's own
// /sys/kernel/livepatch stays empty throughout.
func TestLinuxSysfs(t *testing.T) {
	g := bootPatchGuest(t, 1)
	c, ctx := g.c, g.ctx
	root := agent.LinuxLivepatchRoot
	dir := root + "/" + sampleName
	// Guest commands go through the API as `klp-kvm exec` does: a
	// request made after an operation's reply sees the tree as of it.
	exec := func(cmd string) string {
		t.Helper()
		res, err := c.Exec(ctx, cmd)
		if err != nil {
			t.Fatalf("exec %q: %v", cmd, err)
		}
		if res.Status != 0 {
			t.Fatalf("exec %q: status %d: %s", cmd, res.Status, res.Output)
		}
		return strings.TrimSpace(res.Output)
	}
	linuxOwn := func(when string) {
		t.Helper()
		if got := exec("ls -F /sys/kernel/livepatch"); got != "" {
			t.Errorf("%s: Linux's /sys/kernel/livepatch holds %q, want it empty", when, got)
		}
	}
	enabledOnHost := func() (bool, bool) {
		st, err := c.Patches(ctx)
		if err != nil {
			t.Fatalf("GET /patches: %v", err)
		}
		for _, p := range st.Patches {
			if p.Name == sampleName {
				return p.Enabled, true
			}
		}
		return false, false
	}
	// the agent's lines only: the whole log may pass exec's 32 KiB
	klpLog := func() string { return exec("dmesg | grep -F klp-kvm: ; true") }
	dmesgHas := func(s string) bool { return strings.Contains(klpLog(), s) }

	info, err := c.Sysfs(ctx)
	if err != nil || info.Root != root {
		t.Fatalf("GET /guest/sysfs: %+v %v, want root %s", info, err, root)
	}
	if got := exec("ls -F " + root); got != "" {
		t.Errorf("before any patch: %s holds %q", root, got)
	}
	linuxOwn("before any patch")

	if _, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"}); err != nil {
		t.Fatalf("load: %v\nconsole tail:\n%s", err, tail(g.con.String(), 20))
	}
	if got := exec("cat " + dir + "/enabled"); got != "1" {
		t.Fatalf("guest's %s/enabled after the load: %q, want 1", dir, got)
	}
	for d, want := range map[string]string{
		root:             sampleName + "/",
		dir:              "enabled\nforce\nreplace\nstack_order\ntransition\nvmlinux/",
		dir + "/vmlinux": "cmdline_proc_show,1/\npatched",
	} {
		if got := exec("ls -F " + d); got != want {
			t.Errorf("the guest's %s:\n%s\nwant:\n%s", d, got, want)
		}
	}
	for file, want := range map[string]string{"transition": "0\n", "stack_order": "1\n", "replace": "0\n", "force": "0\n", "vmlinux/patched": "1\n"} {
		if res, err := c.FileRead(ctx, dir+"/"+file); err != nil || res.Content != want {
			t.Errorf("API read of %s: %q %v, want %q", file, res.Content, err, want)
		}
	}
	// `klp-kvm sysfs cat livepatch_sample/enabled`
	if res, err := c.FileRead(ctx, api.SysfsPathUnder(info.Root, sampleName+"/enabled")); err != nil || res.Content != "1\n" {
		t.Errorf("API read of enabled: %q %v, want 1", res.Content, err)
	}
	linuxOwn("after the load")

	// A write inside the guest disables the patch.
	t0 := time.Now()
	exec("echo 0 > " + dir + "/enabled")
	poll.Within(t, guestWait, "the host to disable the patch after the guest's write", func() bool {
		on, ok := enabledOnHost()
		return ok && !on
	})
	t.Logf("guest's echo 0 > enabled: disabled on the host %v after the write returned", time.Since(t0).Round(time.Millisecond))
	poll.Within(t, guestWait, "the guest's file to show 0", func() bool { return exec("cat "+dir+"/enabled") == "0" })
	t.Logf("guest's echo 0 > enabled: the file shows the state reached %v after the write returned", time.Since(t0).Round(time.Millisecond))
	if got := exec("cat /proc/cmdline"); got != g.original {
		t.Errorf("/proc/cmdline after the guest disabled the patch: %q, want the original", got)
	}
	if !dmesgHas("klp-kvm: " + sampleName + "/enabled=0: done") {
		t.Errorf("no success line in the guest's kernel log:\n%s", klpLog())
	}

	// And enables it again.
	t0 = time.Now()
	exec("echo 1 > " + dir + "/enabled")
	poll.Within(t, guestWait, "the host to enable the patch after the guest's write", func() bool {
		on, ok := enabledOnHost()
		return ok && on
	})
	t.Logf("guest's echo 1 > enabled: enabled on the host %v after the write returned", time.Since(t0).Round(time.Millisecond))
	poll.Within(t, guestWait, "/proc/cmdline patched again", func() bool { return exec("cat /proc/cmdline") == patchedMsg })

	// Writes that must fail leave the state, show the real value again
	// and say why in the guest's kernel log.
	second := variant(t, "name=livepatch_sample", "name=livepatch_stack2", patchedMsg, "this has been live patcheD")
	if _, err := c.AddPatch(ctx, api.PatchRequest{Object: second, Name: "livepatch-stack2.ko"}); err != nil {
		t.Fatalf("stacked load: %v", err)
	}
	for _, w := range []struct{ file, value, log, shows string }{
		{"enabled", "1", "enabled=1: EINVAL", "1"},         // the state it is in (Linux's enabled_store)
		{"enabled", "bogus", "enabled=bogus: EINVAL", "1"}, // not a boolean
		{"enabled", "0", "enabled=0: EBUSY", "1"},          // livepatch_stack2 is enabled on top of it
		{"force", "1", "force=1: EINVAL", "0"},             // no transition to force
		{"transition", "1", "transition=1: EPERM", "0"},    // read-only
	} {
		exec("echo " + w.value + " > " + dir + "/" + w.file)
		poll.Within(t, guestWait, "the refusal of "+w.file+"="+w.value+" in the guest's kernel log", func() bool {
			return dmesgHas("klp-kvm: " + sampleName + "/" + w.log)
		})
		poll.Within(t, guestWait, "the guest's "+w.file+" to show "+w.shows+" again", func() bool {
			return exec("cat "+dir+"/"+w.file) == w.shows
		})
		if on, _ := enabledOnHost(); !on || exec("cat /proc/cmdline") != "this has been live patcheD" {
			t.Errorf("after the refused %s=%s: enabled %v, /proc/cmdline %q", w.file, w.value, on, exec("cat /proc/cmdline"))
		}
	}
	t.Logf("guest's kernel log:\n%s", klpLog())
	// `klp-kvm sysfs write livepatch_sample/enabled 0` gets the errno.
	err = c.FileWrite(ctx, api.SysfsPathUnder(info.Root, sampleName+"/enabled"), "0")
	var ae *api.Error
	if !errors.As(err, &ae) || !errors.Is(err, syscall.EBUSY) {
		t.Errorf("API write under the stacked patch: %v, want EBUSY", err)
	}
	if got := exec("cat /run/klp-kvm/livepatch/livepatch_stack2/stack_order"); got != "2" {
		t.Errorf("stacked patch's stack_order %q, want 2", got)
	}

	// Unloading removes the directories; /sys/kernel/livepatch was never
	// Linux's business.
	for _, name := range []string{"livepatch_stack2", sampleName} {
		if _, err := c.Unload(ctx, name, api.OpRequest{}); err != nil {
			t.Fatalf("unload %s: %v", name, err)
		}
	}
	if got := exec("ls -F " + root); got != "" {
		t.Errorf("after the unloads: %s holds %q", root, got)
	}
	if _, err := c.FileRead(ctx, dir+"/enabled"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("read of an unloaded patch's enabled: %v, want ENOENT", err)
	}
	linuxOwn("after the unloads")
	g.untouched("the unloads")
	g.cleanDmesg()
}
