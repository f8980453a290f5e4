// Package e2e holds klp-kvm's end-to-end tests: whole machines booted on an
// engine chosen by $KLP_KVM_ENGINE (emu by default; kvm where /dev/kvm
// exists, and inside the nested tier). This file has the shared pieces,
// which test/guest's tests use too: the engine, a machine closed with the
// test, a console to read while the guest writes.
package e2e

import (
	"bytes"
	"math/bits"
	"os"
	"sync"
	"testing"

	"klp-kvm/kvm"
	"klp-kvm/kvm/engine"
)

// EngineName is the engine the end-to-end tests run on.
func EngineName() string {
	if e := os.Getenv("KLP_KVM_ENGINE"); e != "" {
		return e
	}
	return "emu"
}

// Engine selects EngineName()'s engine and logs why. One that cannot be
// had fails the test: KLP_KVM_ENGINE=kvm asks for real KVM, and its
// absence is a failure, not a skip.
func Engine(tb testing.TB) engine.Engine {
	tb.Helper()
	e, why, err := kvm.SelectEngine(EngineName())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Log(why)
	return e
}

// NewMachine creates a machine from cfg, on Engine(tb) unless cfg.Engine
// is set, and closes it when the test ends (after the test's own cleanups
// registered later, e.g. one that stops it and waits for Run).
func NewMachine(tb testing.TB, cfg kvm.Config) *kvm.Machine {
	tb.Helper()
	if cfg.Engine == nil {
		cfg.Engine = Engine(tb)
	}
	m, err := kvm.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// Console is a machine's console (kvm.Config.Console) that the test
// reads while the vCPUs write it.
type Console struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Write(p)
}

// String is everything written so far.
func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// Checksum is testdata/bootguest.S's checksum routine in Go: the same
// arithmetic (rotate, 128-bit multiply, byte swap, 64/64 division, bit
// scan, double shift, arithmetic shift, conditional move and carry use) over
// the same generated pattern. A guest that prints this value computed it
// the way the host CPU does, whatever engine ran it.
func Checksum() uint64 {
	const k = 0xff51afd7ed558ccd
	h := uint64(0x9e3779b97f4a7c15)
	for i := uint64(0); i < 4096; i++ {
		x := i*0x0123456789abcdef + 0xfedcba9876543210
		h ^= x
		h = bits.RotateLeft64(h, 13)
		hi, lo := bits.Mul64(h, k)
		h = lo ^ hi
		h += bits.ReverseBytes64(x)
		d := (x | 1) & 0xffffffff
		q, r := h/d, h%d
		h ^= q
		h += r
		h += uint64(bits.Len64(d) - 1)
		h = h<<7 | x>>57
		h -= uint64(int64(h) >> 3)
		if x < h {
			h = -h
			h += 2 // adc $0 and add of setc's byte
		}
	}
	return h
}
