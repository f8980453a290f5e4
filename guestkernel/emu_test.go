package guestkernel

import (
	"debug/elf"
	"testing"

	"klp-kvm/kvm/emu"
)

// TestEmuImplementsImage: every instruction of every function of the
// prebuilt image is one the software engine executes (issue 5, "Build").
// Only the test imports kvm/emu: the package itself depends on no engine.
func TestEmuImplementsImage(t *testing.T) {
	im := openImage(t, Vmlinux())
	bad := map[string]int{}
	n := 0
	for _, s := range im.syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		code := im.code(s)
		for off := 0; off < len(code); {
			l, err := emu.Implemented(code[off:])
			if err != nil {
				if bad[err.Error()] == 0 {
					t.Errorf("%s+%#x: %v", s.Name, off, err)
				}
				bad[err.Error()]++
			}
			if l <= 0 {
				break
			}
			off += l
			n++
		}
	}
	t.Logf("%d instructions checked, %d distinct problems", n, len(bad))
}
