package layout

import "testing"

func TestLayout(t *testing.T) {
	if KernelMapSize != 512<<20 {
		t.Errorf("kernel map is %#x bytes, want 512 MiB", uint64(KernelMapSize))
	}
	// PC32/PLT32/32S relocations between patch code and kernel text
	// reach ±2 GiB: the whole patch area (at most 256 MiB, kvm's limit)
	// must lie within that of the kernel's text.
	if PatchAreaVirt+256<<20-KernelLinkVirt > 1<<31 {
		t.Errorf("patch area %#x too far from kernel text %#x", uint64(PatchAreaVirt), uint64(KernelLinkVirt))
	}
	if KernelLinkVirt < KernelMapVirt || KernelLinkVirt >= PatchAreaVirt || BootInfoPhys >= BootLowEnd {
		t.Error("kernel link address outside the kernel map, or boot_info above BootLowEnd")
	}
	for _, c := range []struct{ ram, size, want uint64 }{
		{128 << 20, 16 << 20, 112 << 20},
		{24 << 20, 4 << 20, 20 << 20},
		{(129 << 20) + 4096, 2 << 20, 126 << 20}, // 127 MiB + 4 KiB, aligned down to 2 MiB
	} {
		if got := PatchAreaPhys(c.ram, c.size); got != c.want || got%PatchAreaAlign != 0 {
			t.Errorf("PatchAreaPhys(%#x, %#x) = %#x, want %#x", c.ram, c.size, got, c.want)
		}
	}
}
