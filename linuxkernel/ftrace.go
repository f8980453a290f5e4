package linuxkernel

import (
	"math/bits"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// Ftrace is the guest ftrace's own bookkeeping of the fentry sites, read
// from guest memory: its records (struct dyn_ftrace, one per site, in
// the ftrace_pages list), its lock and its list of registered ftrace_ops.
//
// The host needs it because ftrace verifies a site's bytes before it
// changes them and, finding anything but what it left there (a jmp the
// host wrote), reports an "ftrace bug" and turns itself off for the rest
// of the boot. A record marked FTRACE_FL_DISABLED is one ftrace never
// touches (Linux disables the records of weak functions that way), so
// the host marks the records of the sites it owns: the guest's ftrace
// then skips those functions and keeps working for every other one.
//
// Layouts come from the kernel's BTF and the flag bits from its enum,
// so nothing is hard-coded for one kernel version; the guest is
// untrusted and every walk is bounded.
type Ftrace struct {
	as *AddressSpace

	pagesStart uint64 // &ftrace_pages_start
	lock       uint64 // &ftrace_lock.owner (struct mutex)
	opsList    uint64 // &ftrace_ops_list
	listEnd    uint64 // &ftrace_list_end (the list's sentinel)

	pgNext, pgRecords, pgIndex uint64 // struct ftrace_page
	recSize, recIP, recFlags   uint64 // struct dyn_ftrace

	// Disabled, Enabled and IPModify are FTRACE_FL_DISABLED,
	// FTRACE_FL_ENABLED and FTRACE_FL_IPMODIFY; RefMask masks the ftrace_ops
	// count in the low bits of flags (FTRACE_REF_MAX).
	Disabled, Enabled, IPModify, RefMask uint64
}

// Bounds on the walk of a hostile guest's ftrace pages (Linux 6.1 has
// ~45,000 records in a few hundred pages).
const (
	maxFtracePages   = 1 << 16
	maxFtraceRecords = 1 << 20 // per page
)

// Ftrace reads the layout of the guest's ftrace bookkeeping. It fails
// with ErrNotFound on a kernel without dynamic ftrace or whose BTF lacks
// a type or flag it needs.
func (k *Kernel) Ftrace() (*Ftrace, error) {
	if k.BTF == nil {
		return nil, wrap("ftrace", ErrNotFound, k.BTFErr, "no BTF")
	}
	f := &Ftrace{as: k.AS}
	var err error
	for _, s := range []struct {
		dst  *uint64
		name string
	}{{&f.pagesStart, "ftrace_pages_start"}, {&f.lock, "ftrace_lock"}, {&f.opsList, "ftrace_ops_list"}, {&f.listEnd, "ftrace_list_end"}} {
		if *s.dst, err = k.Symbols.Addr(s.name); err != nil {
			return nil, wrap("ftrace", ErrNotFound, err, "symbol %s", s.name)
		}
	}
	owner, err := memberOffset(k.BTF, "mutex", "owner")
	if err != nil {
		return nil, err
	}
	f.lock += owner
	for _, m := range []struct {
		dst         *uint64
		typ, member string
	}{{&f.pgNext, "ftrace_page", "next"}, {&f.pgRecords, "ftrace_page", "records"}, {&f.pgIndex, "ftrace_page", "index"},
		{&f.recIP, "dyn_ftrace", "ip"}, {&f.recFlags, "dyn_ftrace", "flags"}} {
		if *m.dst, err = memberOffset(k.BTF, m.typ, m.member); err != nil {
			return nil, err
		}
	}
	var rec *btf.Struct
	if err := k.BTF.TypeByName("dyn_ftrace", &rec); err != nil {
		return nil, wrap("ftrace", ErrNotFound, err, "struct dyn_ftrace")
	}
	f.recSize = uint64(rec.Size)
	if f.recSize < f.recFlags+8 || f.recSize > 256 {
		return nil, errf("ftrace", ErrFormat, "struct dyn_ftrace of %d bytes", f.recSize)
	}
	if err := f.flagBits(k.BTF); err != nil {
		return nil, err
	}
	return f, nil
}

// flagBits reads the FTRACE_FL_* values from the kernel's BTF (an
// anonymous enum in include/linux/ftrace.h). The ops count sits below
// the lowest flag (FTRACE_REF_MAX_SHIFT), which moved between versions.
func (f *Ftrace) flagBits(spec *btf.Spec) error {
	for typ, err := range spec.All() {
		if err != nil {
			return wrap("ftrace", ErrFormat, err, "BTF")
		}
		e, ok := typ.(*btf.Enum)
		if !ok {
			continue
		}
		var disabled, enabled, ipmodify, lowest uint64
		for _, v := range e.Values {
			switch v.Name {
			case "FTRACE_FL_DISABLED":
				disabled = v.Value
			case "FTRACE_FL_ENABLED":
				enabled = v.Value
			case "FTRACE_FL_IPMODIFY":
				ipmodify = v.Value
			}
			if strings.HasPrefix(v.Name, "FTRACE_FL_") && bits.OnesCount64(v.Value) == 1 && (lowest == 0 || v.Value < lowest) {
				lowest = v.Value
			}
		}
		if disabled == 0 {
			continue
		}
		for _, b := range []uint64{disabled, enabled, ipmodify} {
			if bits.OnesCount64(b) != 1 {
				return errf("ftrace", ErrFormat, "FTRACE_FL_* values %#x %#x %#x are not single bits", disabled, enabled, ipmodify)
			}
		}
		f.Disabled, f.Enabled, f.IPModify, f.RefMask = disabled, enabled, ipmodify, lowest-1
		return nil
	}
	return errf("ftrace", ErrNotFound, "FTRACE_FL_DISABLED in the BTF's enums")
}

// Record finds the record of the fentry site at ip as ftrace's
// lookup_rec does: the pages whose first and last records bracket ip,
// then a binary search of the page's records (sorted by ip). It returns
// the address of the record's flags word.
func (f *Ftrace) Record(ip uint64) (flagsVA uint64, err error) {
	pg, err := f.as.U64(f.pagesStart)
	if err != nil {
		return 0, wrap("ftrace", ErrBounds, err, "ftrace_pages_start")
	}
	for n := 0; pg != 0; n++ {
		if n == maxFtracePages {
			return 0, errf("ftrace", ErrFormat, "more than %d ftrace pages (a loop?)", maxFtracePages)
		}
		recs, err := f.as.U64(pg + f.pgRecords)
		if err != nil {
			return 0, wrap("ftrace", ErrBounds, err, "ftrace_page at %#x", pg)
		}
		idx, err := f.as.U32(pg + f.pgIndex)
		if err != nil {
			return 0, wrap("ftrace", ErrBounds, err, "ftrace_page at %#x", pg)
		}
		if int32(idx) < 0 || idx > maxFtraceRecords {
			return 0, errf("ftrace", ErrFormat, "ftrace_page at %#x holds %d records", pg, int32(idx))
		}
		if idx > 0 {
			at := func(i uint64) (uint64, error) { return f.as.U64(recs + i*f.recSize + f.recIP) }
			first, err := at(0)
			if err != nil {
				return 0, wrap("ftrace", ErrBounds, err, "records at %#x", recs)
			}
			last, err := at(uint64(idx) - 1)
			if err != nil {
				return 0, wrap("ftrace", ErrBounds, err, "records at %#x", recs)
			}
			if first <= ip && ip <= last {
				lo, hi := uint64(0), uint64(idx)
				for lo < hi {
					mid := lo + (hi-lo)/2
					v, err := at(mid)
					if err != nil {
						return 0, wrap("ftrace", ErrBounds, err, "record %d at %#x", mid, recs)
					}
					switch {
					case v == ip:
						return recs + mid*f.recSize + f.recFlags, nil
					case v < ip:
						lo = mid + 1
					default:
						hi = mid
					}
				}
			}
		}
		if pg, err = f.as.U64(pg + f.pgNext); err != nil {
			return 0, wrap("ftrace", ErrBounds, err, "ftrace_page's next")
		}
	}
	return 0, errf("ftrace", ErrNotFound, "no ftrace record of %#x", ip)
}

// Flags reads a record's flags word (the address Record gave).
func (f *Ftrace) Flags(flagsVA uint64) (uint64, error) {
	v, err := f.as.U64(flagsVA)
	if err != nil {
		return 0, wrap("ftrace", ErrBounds, err, "record flags at %#x", flagsVA)
	}
	return v, nil
}

// Busy reads whether ftrace_lock is held (an update of the records or
// the text may be half done) and whether any ftrace_ops is registered.
// Both are meaningful only while every vCPU is paused.
func (f *Ftrace) Busy() (lockHeld, opsRegistered bool, err error) {
	owner, err := f.as.U64(f.lock)
	if err != nil {
		return false, false, wrap("ftrace", ErrBounds, err, "ftrace_lock")
	}
	head, err := f.as.U64(f.opsList)
	if err != nil {
		return false, false, wrap("ftrace", ErrBounds, err, "ftrace_ops_list")
	}
	return owner != 0, head != f.listEnd, nil
}
