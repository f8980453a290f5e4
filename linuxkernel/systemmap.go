package linuxkernel

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

const (
	maxSystemMapLines = 1 << 22
	maxSystemMapLine  = 1024
)

// ParseSystemMap reads a System.map ("<hex address> <type> <name>" per
// line, as Debian ships in /boot) and shifts every address except absolute
// ones (type A/a: per-CPU offsets and constants) by the KASLR offset.
// The file is input: lines are bounded and must have the three fields.
func ParseSystemMap(r io.Reader, kaslrOffset uint64) ([]Symbol, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxSystemMapLine)
	var syms []Symbol
	for n := 1; sc.Scan(); n++ {
		if n > maxSystemMapLines {
			return nil, errf("System.map", ErrLimit, "more than %d lines", maxSystemMapLines)
		}
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 || len(f[1]) != 1 {
			return nil, errf("System.map", ErrFormat, "line %d: %q is not \"address type name\"", n, sc.Text())
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return nil, wrap("System.map", ErrFormat, err, "line %d: address %q", n, f[0])
		}
		if t := f[1][0]; t != 'A' && t != 'a' {
			a += kaslrOffset
		}
		syms = append(syms, Symbol{Name: f[2], Type: f[1][0], Addr: a})
	}
	if err := sc.Err(); err != nil {
		return nil, wrap("System.map", ErrFormat, err, "reading")
	}
	if len(syms) == 0 {
		return nil, errf("System.map", ErrFormat, "no symbols")
	}
	return syms, nil
}
