// Package linuxpatch reads an ordinary Linux livepatch module (a .ko built
// against the guest kernel's headers, such as Linux's
// samples/livepatch/livepatch-sample.c) and links it for a live Linux
// guest that has no module loader doing it: the host-side half of
// load_module + klp_enable_patch's symbol lookups and relocations, without
// running any of the module's code.
//
//	m, err := linuxpatch.Parse(ko, kernelBTF)          // klp structs, checks
//	im, err := m.Link(linuxpatch.Config{
//		Base:          moduleAreaAddr,                 // or Alloc
//		Resolve:       linuxpatch.VmlinuxResolver(syms),
//		KernelRelease: "6.1.0-57-amd64",
//	})
//	// im.Regions: bytes + address + protection; im.Funcs: what to redirect
//
// The package is pure: no guest, no I/O. The klp struct layouts come from
// the caller's BTF (the guest kernel's own), the guest's symbols from the
// caller's Resolver. docs/linux-patches.md says what is accepted, what is
// ignored and what is refused, and why; the tables in sections.go are the
// code form of it.
//
// A module is untrusted input: elfpatch.ParseObjectFile reads the ELF (the
// project's one ELF reader), every offset, pointer and count read here is
// bounds-checked, walks are bounded, and every failure is an *Error naming
// the section, offset and symbol; FuzzModule keeps it so.
package linuxpatch
