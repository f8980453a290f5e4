package bzimage

import (
	"errors"
	"testing"
)

// FuzzParse: any input either parses into an image whose ranges lie
// inside the input and whose zero page builds, or fails with an *Error.
func FuzzParse(f *testing.F) {
	f.Add(synthetic(0x4000))
	f.Add(synthetic(0x400)[:0x300])
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := Parse(b)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not *Error", err, err)
			}
			return
		}
		if len(img.Kernel) == 0 || len(img.Kernel) > len(b) {
			t.Fatalf("kernel of %d bytes from a %d-byte file", len(img.Kernel), len(b))
		}
		if _, err := img.ZeroPage(BootParams{CmdLinePtr: 0x20000, E820: []E820Entry{{0, 1 << 30, E820RAM}}}); err != nil {
			t.Fatalf("ZeroPage: %v", err)
		}
		_ = img.LoadAddr(1 << 20)
	})
}
