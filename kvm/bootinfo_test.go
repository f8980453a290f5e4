package kvm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"klp-kvm/guestkernel/layout"
	"klp-kvm/kvm/engine"
)

// TestBootInfoMatchesC compiles a program against guestkernel's
// boot_info.h and checks that the C layout is the one encode writes.
func TestBootInfoMatchesC(t *testing.T) {
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: cannot check boot_info.h against the Go layout")
	}
	dir := t.TempDir()
	src := `#include <stdio.h>
#include <stddef.h>
#include "boot_info.h"
#define F(f) printf(#f " %zu\n", offsetof(struct boot_info, f))
int main(void) {
	printf("size %zu\n", sizeof(struct boot_info));
	F(magic); F(version); F(size); F(nr_cpus); F(flags); F(ram_size);
	F(patch_area_phys); F(patch_area_size); F(patch_area_virt);
	F(apic_bus_hz); F(tsc_hz); F(cmdline_len); F(reserved); F(cmdline);
	printf("magic %llx\n", (unsigned long long)BOOT_INFO_MAGIC);
	printf("version %d\ncmdline_max %d\nlow_end %d\n", BOOT_INFO_VERSION, BOOT_INFO_CMDLINE_MAX, BOOT_LOW_END);
	printf("com1 %d\ncom2 %d\npoweroff %d\n", PORT_COM1, PORT_COM2, PORT_POWEROFF);
	return 0;
}`
	if err := os.WriteFile(filepath.Join(dir, "l.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	inc, _ := filepath.Abs("../guestkernel/include")
	bin := filepath.Join(dir, "l")
	if out, err := exec.Command(cc, "-I", inc, "-o", bin, filepath.Join(dir, "l.c")).CombinedOutput(); err != nil {
		t.Fatalf("compile: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"size 1104", "magic 0", "version 8", "size 12", "nr_cpus 16", "flags 20", "ram_size 24",
		"patch_area_phys 32", "patch_area_size 40", "patch_area_virt 48", "apic_bus_hz 56",
		"tsc_hz 64", "cmdline_len 72", "reserved 76", "cmdline 80",
		"magic 31544f4f42504c4b", "version 1", "cmdline_max 1024", "low_end 1048576",
		"com1 1016", "com2 760", "poweroff 244",
	}, "\n") + "\n"
	if string(out) != want {
		t.Fatalf("C layout:\n%s\nwant:\n%s", out, want)
	}
	if bootInfoSize != 1104 || BootInfoMagic != 0x31544f4f42504c4b || BootInfoCmdlineMax != 1024 ||
		layout.BootLowEnd != 1048576 || PortCOM1 != 1016 || PortCOM2 != 760 || PortPowerOff != 244 {
		t.Fatal("Go constants disagree with the C header")
	}
	var b BootInfo
	b.Magic, b.Version, b.Size, b.NrCPUs, b.Flags = 1, 2, 3, 4, 5
	b.RAMSize, b.PatchAreaPhys, b.PatchAreaSize, b.PatchAreaVirt = 6, 7, 8, 9
	b.APICBusHz, b.TSCHz, b.CmdlineLen, b.Reserved = 10, 11, 12, 13
	b.Cmdline[0] = 'x'
	buf := make([]byte, bootInfoSize)
	b.encode(buf)
	for off, v := range map[int]byte{0: 1, 8: 2, 12: 3, 16: 4, 20: 5, 24: 6, 32: 7, 40: 8, 48: 9, 56: 10, 64: 11, 72: 12, 76: 13, 80: 'x'} {
		if buf[off] != v {
			t.Errorf("encode: byte at %d = %d, want %d", off, buf[off], v)
		}
	}
}

type tscVCPU struct {
	engine.VCPU
	hz uint64
}

func (c tscVCPU) TSCHz() (uint64, error) { return c.hz, nil }

// The guest is told the engine's TSC rate, or 0 (unknown) for an engine
// that cannot say: never a guess.
func TestGuestTSCHz(t *testing.T) {
	if hz, err := guestTSCHz(tscVCPU{hz: 2596148000}); err != nil || hz != 2596148000 {
		t.Errorf("engine rate: %d, %v", hz, err)
	}
	var plain struct{ engine.VCPU }
	if hz, err := guestTSCHz(plain); err != nil || hz != 0 {
		t.Errorf("no TSCClock: %d, %v", hz, err)
	}
}
