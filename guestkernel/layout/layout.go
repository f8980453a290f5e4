// Package layout is the one definition of the klp-kvm guest's address
// layout that the host relies on: where the kernel map and the patch area
// are in the guest's virtual address space, where the patch area sits in
// guest RAM, and where the host puts its boot structures and struct
// boot_info. guestkernel/include/boot_info.h is the guest's half of it
// (kvm's bootinfo_test.go compiles the header and compares).
//
// It imports nothing, so that every package that needs the layout can
// import it without climbing the import graph: kvm builds the page tables
// and boot_info from it, livepatch/fakeguest maps its fake memory the same
// way, elfpatch reports lay patches out at its patch area, and the CLI
// shows it. docs/architecture.md ("Guest boot protocol and ABI") explains
// it.
package layout

// Virtual layout (the boot page tables; Linux's x86-64 layout).
const (
	// KernelMapVirt maps physical 0 for the kernel image, like Linux's
	// __START_KERNEL_map: KernelMapVirt + p -> p for p < KernelMapSize.
	KernelMapVirt = 0xffffffff80000000
	// PatchAreaVirt is where the patch area is mapped: Linux's module
	// space, within ±2 GiB of kernel text so that PC32/PLT32/32S
	// relocations of patch code reach the kernel (boot_info's
	// patch_area_virt).
	PatchAreaVirt = 0xffffffffa0000000
	// KernelMapSize is the kernel map's size, 512 MiB: it ends where the
	// patch area begins (Linux splits that GiB the same way).
	KernelMapSize = PatchAreaVirt - KernelMapVirt
	// KernelLinkVirt is the guest kernel's link address (kernel.lds), at
	// physical 16 MiB through the kernel map.
	KernelLinkVirt = 0xffffffff81000000
)

// Physical layout.
const (
	// BootLowEnd: RAM below it holds the host's boot structures (page
	// tables, GDT, TSS, boot_info); no kernel segment may load there
	// (BOOT_LOW_END).
	BootLowEnd = 0x100000
	// BootInfoPhys is the guest-physical address of struct boot_info,
	// passed to every vCPU in RDI (identity-mapped).
	BootInfoPhys = 0x1000
	// PatchAreaAlign is the patch area's alignment in RAM and its size
	// granule: it is mapped with 2 MiB pages.
	PatchAreaAlign = 2 << 20
	// DefaultPatchAreaSize is the patch area's size when the machine's
	// configuration does not say.
	DefaultPatchAreaSize = 16 << 20
)

// PatchAreaPhys is where the patch area of size bytes starts in guest RAM
// of ramSize bytes: at the top of RAM, aligned down to PatchAreaAlign.
// The caller checks that size fits.
func PatchAreaPhys(ramSize, size uint64) uint64 {
	return (ramSize - size) &^ (PatchAreaAlign - 1)
}
