package linuxpatch

import (
	"fmt"

	"klp-kvm/linuxkernel"
)

// VmlinuxResolver resolves against a live kernel's symbols (its kallsyms,
// read by package linuxkernel) as Linux's klp_find_object_symbol does for
// vmlinux: sympos n > 0 is the n-th symbol of the name in kallsyms
// (address) order; sympos 0 needs the name to be unique (aliases at one
// address count as one). Other objects are not found: the guest's
// modules are not in its core kallsyms.
//
// A plain undefined symbol goes through the same rule with sympos 0;
// Config.Exported (VmlinuxExports) adds Linux's rule that it must be
// exported.
func VmlinuxResolver(syms *linuxkernel.Symbols) Resolver {
	return func(obj, name string, sympos int) (uint64, error) {
		if obj != VmlinuxObject {
			return 0, &Error{Op: "resolve", Kind: ErrNotFound, Symbol: name, Detail: fmt.Sprintf("object %s is not loaded in the guest (only vmlinux is resolved)", obj)}
		}
		if syms == nil {
			return 0, &Error{Op: "resolve", Kind: ErrNotFound, Symbol: name, Detail: "no kernel symbols"}
		}
		list := syms.Lookup(name)
		if len(list) == 0 {
			return 0, &Error{Op: "resolve", Kind: ErrNotFound, Symbol: name, Detail: "not in the kernel's kallsyms"}
		}
		if sympos > 0 {
			if sympos > len(list) {
				return 0, &Error{Op: "resolve", Kind: ErrNotFound, Symbol: name, Detail: fmt.Sprintf("sympos %d, but the kernel has %d symbols of that name", sympos, len(list))}
			}
			return list[sympos-1].Addr, nil
		}
		for _, s := range list[1:] {
			if s.Addr != list[0].Addr {
				return 0, &Error{Op: "resolve", Kind: ErrSymbol, Symbol: name, Detail: fmt.Sprintf("unresolvable ambiguity: %d symbols of that name and sympos 0", len(list))}
			}
		}
		return list[0].Addr, nil
	}
}

// VmlinuxExports is the kernel's export table as kallsyms shows it:
// EXPORT_SYMBOL(x) leaves the kernel_symbol entry __ksymtab_x (Debian
// 6.1's kallsyms has them, e.g. "r __ksymtab_seq_printf"). For
// Config.Exported.
func VmlinuxExports(syms *linuxkernel.Symbols) func(name string) bool {
	return func(name string) bool {
		return syms != nil && len(syms.Lookup("__ksymtab_"+name)) > 0
	}
}
