// Package elfpatch reads a guest kernel's ELF image (symbols with Linux's
// sympos semantics, address lookup, fentry call sites and whether each
// function can be live patched) and livepatch objects written like Linux
// livepatch modules (struct klp_patch / klp_object / klp_func from
// guestkernel/include/livepatch.h), and lays a patch out at a virtual base
// with all of its relocations applied: the host-side half of
// klp_enable_patch's "symbol lookups and code relocations".
//
// It is the one ELF reader of the project: package kvm loads the guest
// kernel from a Kernel's entry point and PT_LOAD segments, and package
// guestkernel's symbol table is a view of one.
//
// The package is pure and deterministic: no guest, no engine, no I/O beyond
// reading the input. Its output (an Image) is what the livepatch package
// writes into the guest's patch area. A Kernel or Patch is not modified
// after parsing, so concurrent lookups and Layouts are safe.
//
// Conventions (see livepatch.h):
//   - A patch names its struct klp_patch with KLP_PATCH(p): a struct
//     klp_patch_ref in section .klp.patch, the pointer and KLP_PATCH_ABI
//     (2: klp_patch { mod, objs, states, replace }, PatchABI2). An object
//     built before klp_state has only the 8-byte pointer there, and its
//     klp_patch is { mod, objs, replace } (PatchABI1, no states); both load.
//     The size of the klp_patch symbol, when there is one, must agree.
//     Its name is the string in section .klp.modname (KLP_MODULE_NAME),
//     else the file's stem with '-' -> '_' (ParsePatchFile,
//     ModuleNameFromFile).
//   - klp_patch.states is NULL or an array of struct klp_state in the patch
//     ended by an id of 0 (Linux's klp_for_each_state); an id given twice
//     is refused (ErrDuplicate).
//   - sympos counts the symbols of one name in ascending address order
//     (kallsyms order), from 1; 0 means the only one (ErrAmbiguous if not).
//   - Plain undefined symbols resolve to the kernel's global symbols only;
//     .klp.sym.vmlinux.<name>,<sympos> reaches locals. Other objects than
//     vmlinux are refused (the guest has no modules).
//   - A function is patchable when it is an STT_FUNC with a size, not a
//     compiler clone (.cold/.part/.isra/.constprop/...), and has a checked
//     fentry site at its entry (or right after an entry endbr64).
//   - Layout order: code, read-only data, data, bss, each section at its
//     own alignment (at most 4096), so a base aligned to Patch.Align works.
//
// Raw on-disk structures (rawHeader, rawSection, rawSym, rawRela, ...) are
// kept apart from the decoded types (Section, Symbol, Reloc), as in debug/elf.
// debug/elf is not used because it trusts section sizes when allocating and
// has no notion of sympos or fentry sites.
//
// # Security
//
// Every input is untrusted: a kernel image or a patch object may be
// truncated, hostile or simply not what it claims to be. All offsets, sizes,
// counts and indices are checked against the input before use, every
// allocation is bounded by the input's size (plus a fixed cap for .bss),
// string lengths are capped (KSYM_NAME_LEN), and walks over linked
// structures (klp_object, klp_func and klp_state arrays) are bounded by the section that
// holds them. Malformed input yields an *Error, never a panic; the parsers
// are fuzzed (FuzzParseKernel, FuzzParsePatch) to keep it so.
package elfpatch
