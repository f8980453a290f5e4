package emu

import (
	"debug/elf"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// gccFlags are the guest kernel's flags (docs/architecture.md).
var gccFlags = strings.Fields(`-O2 -ffreestanding -fno-pic -fno-pie -mno-red-zone -mcmodel=kernel
-mgeneral-regs-only -mno-sse -mno-mmx -mno-80387 -fno-stack-protector -fno-omit-frame-pointer
-pg -mfentry -mrecord-mcount -mnop-mcount -fcf-protection=none -ffunction-sections -fdata-sections
-fno-asynchronous-unwind-tables -fno-unwind-tables -fno-reorder-blocks-and-partition
-fno-partial-inlining -fno-delete-null-pointer-checks`)

// TestGCCOutputImplemented compiles kernel-style C with the guest flags
// and checks that the interpreter implements every instruction in it.
func TestGCCOutputImplemented(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed")
	}
	srcs, _ := filepath.Glob("testdata/gcc/*.c")
	if len(srcs) == 0 {
		t.Fatal("no sources in testdata/gcc")
	}
	dir := t.TempDir()
	seen := map[string]int{}
	total := 0
	for _, src := range srcs {
		obj := filepath.Join(dir, filepath.Base(src)+".o")
		args := append(append([]string{}, gccFlags...), "-c", src, "-o", obj)
		if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %s: %v\n%s", src, err, out)
		}
		f, err := elf.Open(obj)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range f.Sections {
			if s.Flags&elf.SHF_EXECINSTR == 0 || s.Type != elf.SHT_PROGBITS {
				continue
			}
			code, err := s.Data()
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off < len(code); {
				n, err := Implemented(code[off:])
				if err != nil {
					t.Errorf("%s %s+%#x: %v", filepath.Base(src), s.Name, off, err)
					if n == 0 {
						break
					}
				} else if x, derr := decodeInst(code[off:min(off+15, len(code))]); derr == nil {
					seen[x.Op.String()]++
				}
				total++
				off += n
			}
		}
		f.Close()
	}
	var ops []string
	for op := range seen {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	t.Logf("%d instructions, %d distinct ops: %s", total, len(ops), strings.Join(ops, " "))
	// The sample must really exercise the tricky ones. (gcc calls
	// __atomic_compare_exchange_16 rather than emitting CMPXCHG16B without
	// -mcx16; TestInstructions covers that instruction.)
	for _, want := range []x86asm.Op{x86asm.CMPXCHG, x86asm.XCHG, x86asm.TZCNT, x86asm.DIV, x86asm.IDIV,
		x86asm.MUL, x86asm.IRETQ, x86asm.LRET, x86asm.SWAPGS, x86asm.BSWAP} {
		if seen[want.String()] == 0 {
			t.Errorf("sample lacks %v", want)
		}
	}
}
