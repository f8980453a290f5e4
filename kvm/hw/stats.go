package hw

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// KVM's binary statistics (KVM_GET_STATS_FD, Linux 5.14+): a per-vCPU file
// of counters, read with pread. It shows what user space cannot see: the
// exits KVM handles in the kernel (MSR writes such as the x2APIC EOI,
// halts, interrupt windows, emulated instructions), which on a platform
// with slow exits is where the time goes.
//
// Layout (include/uapi/linux/kvm.h): struct kvm_stats_header at offset 0,
// then num_desc descriptors of (struct kvm_stats_desc + name_size bytes of
// name) at desc_offset, and the data at data_offset: each descriptor's
// size u64 values at data_offset + desc.offset.

const (
	sizeofStatsHeader = 24 // struct kvm_stats_header: 6 x __u32
	sizeofStatsDesc   = 16 // struct kvm_stats_desc without its name
)

// statDesc is one single-valued counter of the stats file.
type statDesc struct {
	name   string
	offset uint32 // from data_offset
}

// statsLayout is the constant part of a stats file: where the data is and
// what it holds.
type statsLayout struct {
	dataOffset uint32
	dataSize   uint32 // bytes from dataOffset covering every kept value
	descs      []statDesc
}

// parseStats decodes the header and descriptors from the start of a stats
// file (b holds at least up to the end of the descriptors). Histograms
// (size > 1) are skipped; every offset is bounds-checked.
func parseStats(b []byte) (statsLayout, error) {
	var l statsLayout
	if len(b) < sizeofStatsHeader {
		return l, &Error{Op: "KVM stats", Kind: ErrABI, Detail: fmt.Sprintf("header of %d bytes", len(b))}
	}
	le := binary.LittleEndian
	nameSize, num := le.Uint32(b[4:]), le.Uint32(b[8:])
	descOff, dataOff := le.Uint32(b[16:]), le.Uint32(b[20:])
	step := uint64(sizeofStatsDesc) + uint64(nameSize)
	if nameSize == 0 || nameSize > 4096 || num > 1<<16 || uint64(descOff)+step*uint64(num) > uint64(len(b)) {
		return l, &Error{Op: "KVM stats", Kind: ErrABI,
			Detail: fmt.Sprintf("%d descriptors of %d bytes at %#x in %d bytes", num, step, descOff, len(b))}
	}
	l.dataOffset = dataOff
	for i := uint64(0); i < uint64(num); i++ {
		d := b[uint64(descOff)+i*step : uint64(descOff)+(i+1)*step]
		size, off := le.Uint16(d[6:]), le.Uint32(d[8:])
		if size != 1 {
			continue
		}
		name := d[sizeofStatsDesc:]
		for j, c := range name {
			if c == 0 {
				name = name[:j]
				break
			}
		}
		l.descs = append(l.descs, statDesc{name: string(name), offset: off})
		if end := off + 8; end > l.dataSize && end > off {
			l.dataSize = end
		}
	}
	return l, nil
}

// values reads the counters out of data (the file from dataOffset on).
func (l *statsLayout) values(data []byte) map[string]uint64 {
	m := make(map[string]uint64, len(l.descs))
	for _, d := range l.descs {
		if uint64(d.offset)+8 <= uint64(len(data)) {
			m[d.name] = binary.LittleEndian.Uint64(data[d.offset:])
		}
	}
	return m
}

// vcpuStats is an open stats file.
type vcpuStats struct {
	fd     int
	layout statsLayout
	buf    []byte
}

// openStats opens vCPU fd's stats file; nil where KVM has none.
func openStats(vcpuFd int) *vcpuStats {
	r, errno := ioctl(vcpuFd, ioctlGetStatsFD, 0)
	if errno != 0 {
		return nil
	}
	s := &vcpuStats{fd: int(r)}
	hdr := make([]byte, sizeofStatsHeader)
	if n, err := unix.Pread(s.fd, hdr, 0); err != nil || n != len(hdr) {
		s.close()
		return nil
	}
	le := binary.LittleEndian
	end := uint64(le.Uint32(hdr[16:])) + uint64(sizeofStatsDesc+le.Uint32(hdr[4:]))*uint64(le.Uint32(hdr[8:]))
	if end > 1<<24 {
		s.close()
		return nil
	}
	b := make([]byte, end)
	if n, err := unix.Pread(s.fd, b, 0); err != nil || uint64(n) != end {
		s.close()
		return nil
	}
	l, err := parseStats(b)
	if err != nil {
		s.close()
		return nil
	}
	s.layout = l
	s.buf = make([]byte, l.dataSize)
	return s
}

// read returns the current counters, nil if the file cannot be read.
func (s *vcpuStats) read() map[string]uint64 {
	if s == nil {
		return nil
	}
	buf := make([]byte, len(s.buf)) // Stats may be called concurrently
	if n, err := unix.Pread(s.fd, buf, int64(s.layout.dataOffset)); err != nil || n != len(buf) {
		return nil
	}
	return s.layout.values(buf)
}

func (s *vcpuStats) close() {
	if s != nil && s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}
