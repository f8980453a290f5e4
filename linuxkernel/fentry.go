package linuxkernel

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

var (
	endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}
	// nop5 is x86's ideal 5-byte NOP, what ftrace leaves at an unused
	// fentry site (arch/x86/include/asm/nops.h BYTES_NOP5).
	nop5 = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
)

// FentrySite kinds.
const (
	FentryNop     = "nop"     // the 5-byte NOP: not traced, not patched
	FentryCall    = "call"    // call rel32: ftrace_caller, a trampoline, ...
	FentryUnknown = "unknown" // anything else (a jump, a breakpoint mid-poke, ...)
)

// FentrySite is the state of a function's fentry site in guest memory.
type FentrySite struct {
	Func   string `json:"func"`
	Addr   uint64 `json:"addr"` // the function
	Site   uint64 `json:"site"` // the 5 bytes (after ENDBR64 if present)
	Endbr  bool   `json:"endbr64"`
	Kind   string `json:"kind"`
	Bytes  string `json:"bytes"`            // the 5 bytes, hex
	Target uint64 `json:"target,omitempty"` // call target
	// TargetSym is the call target as symbol+offset; empty outside the
	// kernel image (a trampoline ftrace allocated, a BPF program).
	TargetSym string `json:"target_sym,omitempty"`
}

// Fentry checks the fentry site of each function called name (static
// functions may share a name).
func (k *Kernel) Fentry(name string) ([]FentrySite, error) {
	syms := k.Symbols.Lookup(name)
	if len(syms) == 0 {
		return nil, errf("fentry", ErrNotFound, "no symbol %q", name)
	}
	var out []FentrySite
	for _, s := range syms {
		f, err := k.FentryAt(s.Addr)
		if err != nil {
			return nil, err
		}
		f.Func = name
		out = append(out, f)
	}
	return out, nil
}

// FentryAt checks the fentry site of the function at addr.
func (k *Kernel) FentryAt(addr uint64) (FentrySite, error) {
	var b [9]byte
	if err := k.AS.Read(addr, b[:]); err != nil {
		return FentrySite{}, wrap("fentry", ErrBounds, err, "function at %#x", addr)
	}
	return classifyFentry(addr, b, k.Symbols), nil
}

func classifyFentry(addr uint64, b [9]byte, syms *Symbols) FentrySite {
	f := FentrySite{Addr: addr, Site: addr, Kind: FentryUnknown}
	site := b[:5]
	if bytes.Equal(b[:4], endbr64) {
		f.Endbr, f.Site, site = true, addr+4, b[4:9]
	}
	f.Bytes = hex.EncodeToString(site)
	switch {
	case bytes.Equal(site, nop5):
		f.Kind = FentryNop
	case site[0] == 0xe8:
		f.Kind = FentryCall
		f.Target = f.Site + 5 + uint64(int64(int32(binary.LittleEndian.Uint32(site[1:]))))
		// Name the target only inside the kernel image: beyond _end
		// (module space: ftrace's per-ops trampolines, BPF) the nearest
		// symbol below would be a wrong name.
		end, err := uint64(0), error(nil)
		if syms != nil {
			end, err = syms.Addr("_end")
		}
		if syms != nil && (err != nil || f.Target < end) {
			if s, off, ok := syms.At(f.Target); ok {
				f.TargetSym = s.Name
				if off != 0 {
					f.TargetSym = fmt.Sprintf("%s+%#x", s.Name, off)
				}
			}
		}
	}
	return f
}
