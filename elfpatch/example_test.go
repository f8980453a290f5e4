package elfpatch_test

import (
	"fmt"
	"os"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel/layout"
)

// The host side of klp_enable_patch: read the guest kernel, read the patch,
// lay it out in the patch area; the Image says what to write where.
func Example() {
	f, err := os.Open("testdata/kernel/vmlinux")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	k, err := elfpatch.OpenKernel(f)
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := elfpatch.ParsePatchFile("../guestkernel/prebuilt/patches/livepatch-sample.o")
	if err != nil {
		fmt.Println(err)
		return
	}
	im, err := p.Layout(layout.PatchAreaVirt, k)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("patch %s: %d bytes at %#x\n", p.Name, im.Size(), im.Base)
	for _, obj := range im.Objects {
		for _, fn := range obj.Funcs {
			fmt.Printf("%s/%s: redirect fentry site %#x (% x) to %s at %#x\n",
				obj.Name, fn.OldName, fn.Site.Addr, fn.Site.Bytes, fn.NewName, fn.NewAddr)
		}
	}
	// Output:
	// patch livepatch_sample: 336 bytes at 0xffffffffa0000000
	// vmlinux/cmdline_proc_show: redirect fentry site 0xffffffff820001e0 (0f 1f 44 00 00) to livepatch_cmdline_proc_show at 0xffffffffa0000000
}
