package patchbuild

import (
	"bytes"
	"fmt"
	"path"
	"strconv"

	"klp-kvm/elfpatch"
)

// kernelIndex is the running kernel's symbol table seen per source file:
// the local symbols that follow each STT_FILE symbol are that file's (the
// linker keeps them grouped), so a static of kernel/vfs.c is found by
// (vfs.c, name), and its sympos is its rank among all symbols of its name.
type kernelIndex struct {
	k      *elfpatch.Kernel
	locals map[string]map[string][]int // file basename -> name -> symbol indices
	files  map[string]int              // basename -> how many FILE symbols carry it
}

func newKernelIndex(k *elfpatch.Kernel) *kernelIndex {
	ki := &kernelIndex{k: k, locals: map[string]map[string][]int{}, files: map[string]int{}}
	cur := ""
	for _, s := range k.Symbols() {
		switch {
		case s.Type == elfpatch.TypeFile:
			cur = s.Name
			ki.files[cur]++
			if ki.locals[cur] == nil {
				ki.locals[cur] = map[string][]int{}
			}
		case s.Bind != elfpatch.BindLocal:
			cur = "" // locals come first; a global ends every file's block
		case cur != "" && s.Name != "" && s.Defined():
			ki.locals[cur][s.Name] = append(ki.locals[cur][s.Name], s.Index)
		}
	}
	return ki
}

// symbol finds the kernel's copy of a "before" symbol of unit path.
func (ki *kernelIndex) symbol(unitPath, name string, global bool) (elfpatch.Symbol, error) {
	if global {
		s, err := ki.k.LookupGlobal(name)
		if err != nil {
			return s, fmt.Errorf("%s (global, %s) is not in the kernel image", name, unitPath)
		}
		return s, nil
	}
	base := path.Base(unitPath)
	if ki.files[base] == 0 {
		return elfpatch.Symbol{}, fmt.Errorf("%s has no local symbols in the kernel image (no FILE symbol %s), so static %s cannot be found", unitPath, base, name)
	}
	if ki.files[base] > 1 {
		return elfpatch.Symbol{}, fmt.Errorf("the kernel image has %d source files called %s: static %s of %s is ambiguous", ki.files[base], base, name, unitPath)
	}
	idx := ki.locals[base][name]
	switch len(idx) {
	case 0:
		return elfpatch.Symbol{}, fmt.Errorf("static %s of %s is not in the kernel image", name, unitPath)
	case 1:
		return ki.k.Symbols()[idx[0]], nil
	}
	return elfpatch.Symbol{}, fmt.Errorf("static %s appears %d times in %s's symbols in the kernel image", name, len(idx), base)
}

// refName is how a patch names a kernel symbol: the plain name for a
// global, else .klp.sym.vmlinux.NAME,POS (POS 0 when the name is unique).
func (ki *kernelIndex) refName(s elfpatch.Symbol) string {
	if s.Bind != elfpatch.BindLocal {
		if g, err := ki.k.LookupGlobal(s.Name); err == nil && g.Value == s.Value {
			return s.Name
		}
	}
	pos, count := ki.k.Sympos(s.Index)
	if count <= 1 {
		pos = 0
	}
	return ".klp.sym." + elfpatch.VmlinuxObject + "." + s.Name + "," + strconv.Itoa(pos)
}

// sympos is the old_sympos a klp_func needs for s (0 when unique).
func (ki *kernelIndex) sympos(s elfpatch.Symbol) int {
	pos, count := ki.k.Sympos(s.Index)
	if count <= 1 {
		return 0
	}
	return pos
}

// verifyUnit checks that every function of a "before" unit is the kernel's,
// byte for byte except the relocated fields: the source tree is the one the
// running kernel was built from.
func (ki *kernelIndex) verifyUnit(u *unit) []string {
	var bad []string
	for _, f := range u.funcs {
		s, err := ki.symbol(u.path, f.name, f.global)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		if s.Size != f.size {
			bad = append(bad, fmt.Sprintf("%s (%s): %d bytes in this build, %d in the kernel", f.name, u.path, f.size, s.Size))
			continue
		}
		kb, ok := ki.k.ReadVA(s.Value, int(s.Size))
		if !ok {
			bad = append(bad, fmt.Sprintf("%s (%s): the kernel image has no bytes for it", f.name, u.path))
			continue
		}
		if mine, theirs := masked(f.code, f.relocs), masked(kb, f.relocs); !bytes.Equal(mine, theirs) {
			at := 0
			for at < len(mine) && mine[at] == theirs[at] {
				at++
			}
			bad = append(bad, fmt.Sprintf("%s (%s): code differs from the kernel's at +%#x", f.name, u.path, at))
		}
	}
	return bad
}
