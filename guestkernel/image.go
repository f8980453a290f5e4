// Package guestkernel is the host's view of the klp-kvm guest kernel: its
// embedded prebuilt image and sample patch objects, the boot_info and
// klp_abi.h layouts, task enumeration and frame-pointer stack walks
// through klp_guest_abi, and the writer of klp_sysfs_state.
//
// Security: everything read from guest memory is untrusted. Counts are
// clamped to capacities, offsets checked against strides, frame pointers
// against stack bounds, walks limited in depth; malformed data gives an
// *Error, never a panic.
//
// The C sources, Makefile and linker script live beside this file; `make
// -C guestkernel prebuilt` rebuilds prebuilt/vmlinux byte for byte (Debian
// 12's gcc 12.2 and binutils 2.40).
package guestkernel

import (
	"embed"
	"io/fs"
	"path"
	"sort"
	"strings"
)

//go:embed prebuilt/vmlinux
var vmlinux []byte

//go:embed prebuilt/patches
var patchFS embed.FS

// Vmlinux returns the prebuilt guest kernel image (ELF). The slice is
// shared: do not modify it.
func Vmlinux() []byte { return vmlinux }

// PatchNames lists the prebuilt patch objects ("livepatch-sample.o", ...).
func PatchNames() []string {
	ents, err := fs.ReadDir(patchFS, "prebuilt/patches")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".o") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// Patch returns a prebuilt patch object by file name, with or without ".o".
func Patch(name string) ([]byte, error) {
	if !strings.HasSuffix(name, ".o") {
		name += ".o"
	}
	if name != path.Base(name) {
		return nil, errorf("read patch", ErrInvalid, 0, "%q is not a file name", name)
	}
	b, err := patchFS.ReadFile("prebuilt/patches/" + name)
	if err != nil {
		return nil, &Error{Op: "read patch", Kind: ErrNotFound, Detail: name, Err: err}
	}
	return b, nil
}

// KernelSymbols loads the symbol table of the embedded kernel.
func KernelSymbols() (*Symbols, error) { return LoadSymbols(vmlinux) }
