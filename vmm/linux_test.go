package vmm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"klp-kvm/api"
	"klp-kvm/kvm"
)

// tinyBzImage is a well-formed bzImage header in front of 64 KiB of
// protected-mode "kernel": enough for kvm.New to build a Linux machine,
// which these tests never run.
func tinyBzImage() []byte {
	const kernel = 0x10000
	b := make([]byte, 5*512+kernel)
	le := binary.LittleEndian
	b[0x1f1] = 4                        // setup_sects
	le.PutUint32(b[0x1f4:], kernel/16)  // syssize
	le.PutUint16(b[0x1fe:], 0xaa55)     // boot_flag
	copy(b[0x202:], "HdrS")             // header
	le.PutUint16(b[0x206:], 0x020f)     // version
	b[0x211] = 1                        // loadflags: LOADED_HIGH
	le.PutUint32(b[0x22c:], 0x7fffffff) // initrd_addr_max
	le.PutUint32(b[0x230:], 0x200000)   // kernel_alignment
	b[0x234], b[0x235] = 1, 21          // relocatable_kernel, min_alignment
	le.PutUint16(b[0x236:], 3)          // xloadflags: KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
	le.PutUint32(b[0x238:], 2047)       // cmdline_size
	le.PutUint64(b[0x258:], 0x1000000)  // pref_address
	le.PutUint32(b[0x260:], 0x4000000)  // init_size
	return b
}

// TestLinuxGuestLivepatch: a Linux guest's VMM live-patches it with
// linuxlive (not livepatch.Manager): the patch routes answer from it
// (an empty list before any patch), and a patch that is not a module is
// refused with EINVAL, before the guest is ever read. Linux guests need
// engine.PCPlatform, i.e. /dev/kvm.
func TestLinuxGuestLivepatch(t *testing.T) {
	v, err := New(Config{Engine: "kvm", Kernel: tinyBzImage()})
	if errors.Is(err, kvm.ErrConfig) {
		t.Skipf("no kvm engine here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !v.Machine.IsLinux() || v.Manager != nil || v.Linux == nil || v.NoLivepatch != nil {
		t.Fatalf("Linux guest: IsLinux %v, Manager %v, Linux %v, NoLivepatch %v", v.Machine.IsLinux(), v.Manager, v.Linux, v.NoLivepatch)
	}
	if v.Kernel == nil {
		t.Error("Linux guest: no kernel inspector (POST /kernel would answer ENOENT)")
	}
	base, size := v.Machine.LinuxPatchArea()
	st := v.Linux.Status()
	if size != kvm.LinuxDefaultPatchAreaMiB<<20 || st.PatchAreaBase != base || st.PatchAreaSize != size || len(st.Patches) != 0 {
		t.Errorf("patch area [%#x, +%#x), status %+v", base, size, st)
	}
	rec := do(t, v.Handler(), api.RoutePatches, nil)
	if rec.Code != http.StatusOK {
		t.Errorf("GET /patches = %d %s, want 200", rec.Code, rec.Body)
	}
}

// TestLinuxGuestWithoutPatchArea: with no patch area there is no live
// patching; the patch routes answer 501 EOPNOTSUPP saying why, not 404.
func TestLinuxGuestWithoutPatchArea(t *testing.T) {
	v, err := New(Config{Engine: "kvm", Kernel: tinyBzImage(), PatchAreaMiB: -1})
	if errors.Is(err, kvm.ErrConfig) {
		t.Skipf("no kvm engine here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Linux != nil || !errors.Is(v.NoLivepatch, ErrLinuxNoLivepatch) {
		t.Fatalf("Linux %v, NoLivepatch %v", v.Linux, v.NoLivepatch)
	}
	rec := do(t, v.Handler(), api.RoutePatches, nil)
	var reply api.ErrorReply
	json.NewDecoder(rec.Body).Decode(&reply)
	if rec.Code != http.StatusNotImplemented || reply.Errno != "EOPNOTSUPP" {
		t.Errorf("GET /patches = %d %+v, want 501 EOPNOTSUPP", rec.Code, reply)
	}
	if rec := do(t, v.Handler(), api.RouteMachine, nil); rec.Code != http.StatusOK {
		t.Errorf("GET /machine = %d, want 200", rec.Code)
	}
}

// TestLinuxGuestOnEmu: the software engine refuses a bzImage.
func TestLinuxGuestOnEmu(t *testing.T) {
	_, err := New(Config{Engine: "emu", Kernel: tinyBzImage()})
	if !errors.Is(err, kvm.ErrConfig) {
		t.Fatalf("Linux guest on emu: %v, want kvm.ErrConfig", err)
	}
}
