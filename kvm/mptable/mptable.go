// Package mptable writes an Intel MultiProcessor Specification 1.4 table
// (the floating pointer and the configuration table) describing klp-kvm's
// PC platform to a Linux guest: one processor entry per vCPU, an ISA bus,
// KVM's in-kernel IOAPIC, the ISA interrupts routed to it and the local
// interrupts of the LAPICs. Linux finds the floating pointer by scanning
// low memory and starts the application processors from it. Pure.
package mptable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"klp-kvm/klperr"
)

// Platform constants the table describes.
const (
	APICDefaultBase   = 0xfee00000 // where every LAPIC sits
	IOAPICDefaultBase = 0xfec00000 // KVM's in-kernel IOAPIC
	apicVersion       = 0x14       // integrated APIC (KVM reports 0x14 in its version register)
	ioapicVersion     = 0x11       // KVM's IOAPIC version register
	ISAIRQs           = 16
	MaxCPUs           = 254 // xAPIC ids are 8 bits, 0xff is broadcast, one id for the IOAPIC
	specRev           = 4   // MP spec 1.4
)

// Entry types and sizes (MP spec 1.4, chapter 4).
const (
	entryProcessor = 0
	entryBus       = 1
	entryIOAPIC    = 2
	entryIOIntr    = 3
	entryLocalIntr = 4

	FloatSize     = 16
	headerSize    = 44
	processorSize = 20
	otherSize     = 8
)

// Interrupt types of I/O and local interrupt entries.
const (
	intINT    = 0
	intNMI    = 1
	intExtINT = 3
)

// Processor entry flags and the feature word Linux checks (FPU, APIC).
const (
	cpuEnabled = 1 << 0
	cpuBSP     = 1 << 1
	// cpu_signature family 6 and features FPU | APIC: Linux only prints
	// them; any plausible value does.
	cpuSignature = 0x600
	cpuFeatures  = 1<<0 | 1<<9
)

var (
	// ErrTooBig: the table does not fit the space or the CPU count is out
	// of range.
	ErrTooBig = errors.New("MP table does not fit")
)

// Error is the one error type of package mptable (klperr convention).
type Error struct {
	Op     string
	Kind   error
	Errno  syscall.Errno
	Detail string
	Err    error
}

func (e *Error) Error() string {
	return klperr.Format("mptable", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

// Size is the number of bytes Build writes for cpus processors.
func Size(cpus int) int {
	return FloatSize + headerSize + cpus*processorSize + otherSize /* bus */ + otherSize /* ioapic */ +
		ISAIRQs*otherSize + 2*otherSize /* LINT0, LINT1 */
}

// IOAPICID is the IOAPIC's id in the table: the first id after the
// processors' (their APIC ids are 0..cpus-1), as Firecracker does.
func IOAPICID(cpus int) uint8 { return uint8(cpus) }

// Build writes the table for cpus vCPUs (APIC id = vCPU index, vCPU 0 the
// bootstrap processor) into dst, which sits at guest-physical address
// base: the floating pointer first, the configuration table right after.
// It returns the bytes written.
func Build(dst []byte, base uint64, cpus int) (int, error) {
	if cpus < 1 || cpus > MaxCPUs {
		return 0, &Error{Op: "build", Kind: ErrTooBig, Detail: fmt.Sprintf("%d CPUs, want 1..%d", cpus, MaxCPUs)}
	}
	n := Size(cpus)
	if len(dst) < n || base+uint64(n) > 1<<20 || base%16 != 0 {
		return 0, &Error{Op: "build", Kind: ErrTooBig, Detail: fmt.Sprintf("%d bytes at %#x in a %d-byte space: want 16-byte aligned, below 1 MiB", n, base, len(dst))}
	}
	le := binary.LittleEndian
	clear(dst[:n])

	// The configuration table.
	t := dst[FloatSize:n]
	copy(t[0:], "PCMP")
	le.PutUint16(t[4:], uint16(len(t))) // base_table_length
	t[6] = specRev
	copy(t[8:16], "KLPKVM  ")      // oem_id
	copy(t[16:28], "KLP-KVM     ") // product_id
	o := headerSize
	entries := 0
	ioapic := IOAPICID(cpus)
	for id := 0; id < cpus; id++ {
		e := t[o : o+processorSize]
		e[0] = entryProcessor
		e[1] = uint8(id)
		e[2] = apicVersion
		e[3] = cpuEnabled
		if id == 0 {
			e[3] |= cpuBSP
		}
		le.PutUint32(e[4:], cpuSignature)
		le.PutUint32(e[8:], cpuFeatures)
		o += processorSize
		entries++
	}
	put8 := func(b ...byte) {
		copy(t[o:o+otherSize], b)
		o += otherSize
		entries++
	}
	put8(entryBus, 0, 'I', 'S', 'A', ' ', ' ', ' ')
	e := t[o:]
	put8(entryIOAPIC, ioapic, ioapicVersion, 1)
	le.PutUint32(e[4:], IOAPICDefaultBase)
	// ISA IRQ n on IOAPIC pin n: KVM's default GSI routing sends GSI n to
	// both the PIC and IOAPIC pin n (the PIT fires GSI 0, so IRQ 0 is
	// pin 0 here, not the pin 2 of a real PC's interrupt override).
	// Flags 0: polarity and trigger conform to the bus (ISA: edge, high).
	for irq := 0; irq < ISAIRQs; irq++ {
		put8(entryIOIntr, intINT, 0, 0, 0, uint8(irq), ioapic, uint8(irq))
	}
	// LINT0 of every LAPIC is ExtINT (the PIC's output, virtual wire
	// mode), LINT1 NMI: what a PC wires and Linux expects.
	put8(entryLocalIntr, intExtINT, 0, 0, 0, 0, 0xff, 0)
	put8(entryLocalIntr, intNMI, 0, 0, 0, 0, 0xff, 1)
	le.PutUint16(t[34:], uint16(entries)) // entry_count
	le.PutUint32(t[36:], APICDefaultBase) // lapic_addr
	t[7] = checksum(t)

	// The floating pointer.
	f := dst[:FloatSize]
	copy(f, "_MP_")
	le.PutUint32(f[4:], uint32(base)+FloatSize) // physptr
	f[8] = 1                                    // length in 16-byte units
	f[9] = specRev
	// feature1 = 0: the configuration table is present (no default config).
	f[10] = checksum(f)
	return n, nil
}

// checksum is the byte that makes b sum to 0 (mod 256), given that the
// checksum's own byte is 0 in b.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
