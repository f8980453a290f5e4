package linuxpatch

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"

	"klp-kvm/linuxkernel"
)

// Layout is where the fields klp-kvm reads live in Linux's struct
// klp_patch, klp_object, klp_func and klp_state, taken from BTF (the
// guest kernel's own: the layouts depend on the kernel's configuration,
// e.g. CONFIG_LIVEPATCH's kobjects and lists). Offsets and sizes are in
// bytes.
type Layout struct {
	PatchSize, PatchMod, PatchObjs, PatchReplace uint64
	PatchStates                                  int64 // -1: no klp_patch.states (Linux < 5.5)

	ObjectSize, ObjectName, ObjectFuncs uint64
	// ObjectCallbacks are klp_object.callbacks.{pre_patch, post_patch,
	// pre_unpatch, post_unpatch}.
	ObjectCallbacks [4]uint64

	FuncSize, FuncOldName, FuncNewFunc, FuncOldSympos uint64

	StateSize, StateID, StateVersion uint64 // StateSize 0 with PatchStates -1

	// ModuleSize is sizeof(struct module), 0 if the BTF lacks it: Linux's
	// loader refuses a module whose .gnu.linkonce.this_module differs.
	ModuleSize uint64
}

// CallbackNames are the klp_callbacks members, in Layout.ObjectCallbacks
// order.
var CallbackNames = [4]string{"pre_patch", "post_patch", "pre_unpatch", "post_unpatch"}

// maxStructSize bounds the klp structs' sizes (6.1: klp_patch 200 bytes,
// klp_object 336, klp_func 152): a larger one is not Linux's.
const maxStructSize = 4096

// LayoutFromBTF resolves Layout from spec: each member's offset, with its
// size checked against what the field is (8-byte pointers, unsigned long
// old_sympos, bool replace). A missing member or an unexpected size is
// ErrFormat naming it.
func LayoutFromBTF(spec *btf.Spec) (*Layout, error) {
	if spec == nil {
		return nil, errf("btf", ErrFormat, "no BTF: the kernel's BTF (its .BTF section) gives the klp struct layouts")
	}
	l := &Layout{PatchStates: -1}
	type field struct {
		dst  *uint64
		path string
		size uint64
	}
	get := func(strct string, fields []field) (uint64, error) {
		s, err := structByName(spec, strct)
		if err != nil {
			return 0, err
		}
		for _, f := range fields {
			off, size, err := member(s, f.path)
			if err != nil {
				return 0, err
			}
			if size != f.size {
				return 0, errf("btf", ErrFormat, "%s.%s is %d bytes, want %d", strct, f.path, size, f.size)
			}
			if off > uint64(s.Size) || size > uint64(s.Size)-off {
				return 0, errf("btf", ErrFormat, "%s.%s at %d+%d lies outside the struct (%d bytes)", strct, f.path, off, size, s.Size)
			}
			*f.dst = off
		}
		return uint64(s.Size), nil
	}
	var err error
	if l.PatchSize, err = get("klp_patch", []field{{&l.PatchMod, "mod", 8}, {&l.PatchObjs, "objs", 8}, {&l.PatchReplace, "replace", 1}}); err != nil {
		return nil, err
	}
	if l.ObjectSize, err = get("klp_object", []field{
		{&l.ObjectName, "name", 8}, {&l.ObjectFuncs, "funcs", 8},
		{&l.ObjectCallbacks[0], "callbacks.pre_patch", 8}, {&l.ObjectCallbacks[1], "callbacks.post_patch", 8},
		{&l.ObjectCallbacks[2], "callbacks.pre_unpatch", 8}, {&l.ObjectCallbacks[3], "callbacks.post_unpatch", 8},
	}); err != nil {
		return nil, err
	}
	if l.FuncSize, err = get("klp_func", []field{{&l.FuncOldName, "old_name", 8}, {&l.FuncNewFunc, "new_func", 8}, {&l.FuncOldSympos, "old_sympos", 8}}); err != nil {
		return nil, err
	}
	// klp_state and klp_patch.states arrived together (Linux 5.5).
	s, err := structByName(spec, "klp_patch")
	if err != nil {
		return nil, err
	}
	if off, size, err := member(s, "states"); err == nil {
		if size != 8 {
			return nil, errf("btf", ErrFormat, "klp_patch.states is %d bytes, want 8", size)
		}
		l.PatchStates = int64(off)
		if l.StateSize, err = get("klp_state", []field{{&l.StateID, "id", 8}, {&l.StateVersion, "version", 4}}); err != nil {
			return nil, err
		}
	}
	if mod, err := structByName(spec, "module"); err == nil {
		l.ModuleSize = uint64(mod.Size)
	}
	for _, c := range []struct {
		name string
		size uint64
	}{{"klp_patch", l.PatchSize}, {"klp_object", l.ObjectSize}, {"klp_func", l.FuncSize}, {"klp_state", l.StateSize}} {
		if c.size > maxStructSize || (c.size == 0 && (c.name != "klp_state" || l.PatchStates >= 0)) {
			return nil, errf("btf", ErrFormat, "struct %s is %d bytes (1..%d)", c.name, c.size, maxStructSize)
		}
	}
	return l, nil
}

func structByName(spec *btf.Spec, name string) (*btf.Struct, error) {
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		return nil, &Error{Op: "btf", Kind: ErrFormat, Detail: "struct " + name, Err: err}
	}
	return s, nil
}

// member is the byte offset and size of a dotted member path in s,
// looking through anonymous structs and unions as C does (depth-limited).
func member(s *btf.Struct, path string) (off, size uint64, err error) {
	var typ btf.Type = s
	for _, name := range strings.Split(path, ".") {
		m, o, ok := linuxkernel.FindMember(typ, name)
		if !ok {
			return 0, 0, errf("btf", ErrFormat, "struct %s has no member %s", s.Name, path)
		}
		if m.BitfieldSize != 0 || m.Offset%8 != 0 {
			return 0, 0, errf("btf", ErrFormat, "%s.%s is a bitfield", s.Name, path)
		}
		off += o + uint64(m.Offset)/8
		typ = m.Type
	}
	n, serr := btf.Sizeof(typ)
	if serr != nil {
		return 0, 0, &Error{Op: "btf", Kind: ErrFormat, Detail: fmt.Sprintf("size of %s.%s", s.Name, path), Err: serr}
	}
	return off, uint64(n), nil
}
