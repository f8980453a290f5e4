package linuxkernel

import (
	"bytes"

	"github.com/cilium/ebpf/btf"
)

// maxBTFBytes bounds the kernel's .BTF section (Debian 6.1: ~5 MiB).
const maxBTFBytes = 64 << 20

// readBTF reads __start_BTF..__stop_BTF from guest memory and parses it
// with cilium/ebpf's btf package (raw BTF: header, types, strings).
func readBTF(as *AddressSpace, syms *Symbols) (*btf.Spec, int, error) {
	start, err := syms.Addr("__start_BTF")
	if err != nil {
		return nil, 0, wrap("btf", ErrNotFound, err, "kernel without CONFIG_DEBUG_INFO_BTF?")
	}
	stop, err := syms.Addr("__stop_BTF")
	if err != nil {
		return nil, 0, wrap("btf", ErrNotFound, err, "__stop_BTF")
	}
	if stop <= start || stop-start > maxBTFBytes {
		return nil, 0, errf("btf", ErrLimit, "__start_BTF %#x .. __stop_BTF %#x: not 1..%d bytes", start, stop, maxBTFBytes)
	}
	raw := make([]byte, stop-start)
	if err := as.Read(start, raw); err != nil {
		return nil, 0, wrap("btf", ErrBounds, err, ".BTF at %#x", start)
	}
	return ParseBTF(raw)
}

// ParseBTF parses raw BTF and counts its types.
func ParseBTF(raw []byte) (*btf.Spec, int, error) {
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		return nil, 0, wrap("btf", ErrFormat, err, "%d bytes of .BTF", len(raw))
	}
	n := 0
	for _, err := range spec.All() {
		if err != nil {
			return nil, 0, wrap("btf", ErrFormat, err, "type %d", n+1)
		}
		n++
	}
	return spec, n, nil
}

// memberOffset is the byte offset of path (e.g. "thread.sp") in struct
// name, looking through anonymous structs and unions as C does.
func memberOffset(spec *btf.Spec, name, path string) (uint64, error) {
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		return 0, wrap("btf", ErrNotFound, err, "struct %s", name)
	}
	var typ btf.Type = s
	var off uint64
	for _, field := range bytes.Split([]byte(path), []byte(".")) {
		m, o, ok := findMember(typ, string(field), 0)
		if !ok {
			return 0, errf("btf", ErrNotFound, "member %s.%s (at %q)", name, path, field)
		}
		if m.BitfieldSize != 0 || m.Offset%8 != 0 {
			return 0, errf("btf", ErrFormat, "member %s.%s is a bitfield", name, path)
		}
		off += o + uint64(m.Offset)/8
		typ = m.Type
	}
	return off, nil
}

// FindMember searches typ's members for name, descending into anonymous
// structs and unions (depth-limited: BTF comes from the guest or from a
// module); the offset is the anonymous members' byte offset to add to
// the member's own. linuxpatch reads klp_patch's layout with it too.
func FindMember(typ btf.Type, name string) (btf.Member, uint64, bool) {
	return findMember(typ, name, 0)
}

func findMember(typ btf.Type, name string, depth int) (btf.Member, uint64, bool) {
	if depth > 8 {
		return btf.Member{}, 0, false
	}
	var members []btf.Member
	switch t := btf.UnderlyingType(typ).(type) {
	case *btf.Struct:
		members = t.Members
	case *btf.Union:
		members = t.Members
	default:
		return btf.Member{}, 0, false
	}
	for _, m := range members {
		if m.Name == name {
			return m, 0, true
		}
	}
	for _, m := range members {
		if m.Name != "" {
			continue
		}
		if inner, o, ok := findMember(m.Type, name, depth+1); ok {
			return inner, o + uint64(m.Offset)/8, true
		}
	}
	return btf.Member{}, 0, false
}

// memberSize is the size in bytes of member path of struct name.
func memberSize(spec *btf.Spec, name, path string) (uint64, error) {
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		return 0, wrap("btf", ErrNotFound, err, "struct %s", name)
	}
	var typ btf.Type = s
	for _, field := range bytes.Split([]byte(path), []byte(".")) {
		m, _, ok := findMember(typ, string(field), 0)
		if !ok {
			return 0, errf("btf", ErrNotFound, "member %s.%s", name, path)
		}
		typ = m.Type
	}
	n, err := btf.Sizeof(typ)
	if err != nil {
		return 0, wrap("btf", ErrFormat, err, "size of %s.%s", name, path)
	}
	return uint64(n), nil
}

// TaskLayout is where the fields this package reads live in task_struct,
// from the kernel's own BTF.
type TaskLayout struct {
	Tasks, Pid, Tgid, Comm, State, ExitState, Stack, ThreadSP, OnCPU, CPU uint64
	CommLen                                                               uint64
	// Threads: task_struct.signal, task_struct.thread_node and
	// signal_struct.thread_head (every thread of a process hangs on its
	// signal_struct's thread_head).
	Signal, ThreadNode, SignalThreadHead uint64
	// PcpuHotCurrent is pcpu_hot.current_task's offset (Linux >= 6.2),
	// -1 when the kernel has the per-CPU variable current_task instead.
	PcpuHotCurrent int64
}

// taskLayout resolves TaskLayout; a missing member is ErrNotFound naming
// it.
func taskLayout(spec *btf.Spec) (*TaskLayout, error) {
	l := &TaskLayout{PcpuHotCurrent: -1}
	for _, f := range []struct {
		dst  *uint64
		path string
	}{
		{&l.Tasks, "tasks"}, {&l.Pid, "pid"}, {&l.Tgid, "tgid"}, {&l.Comm, "comm"},
		{&l.State, "__state"}, {&l.ExitState, "exit_state"}, {&l.Stack, "stack"},
		{&l.ThreadSP, "thread.sp"}, {&l.OnCPU, "on_cpu"},
		{&l.Signal, "signal"}, {&l.ThreadNode, "thread_node"},
	} {
		o, err := memberOffset(spec, "task_struct", f.path)
		if err != nil {
			return nil, err
		}
		*f.dst = o
	}
	// The task's CPU: thread_info.cpu since 5.16 (THREAD_INFO_IN_TASK),
	// task_struct.cpu before.
	o, err := memberOffset(spec, "task_struct", "thread_info.cpu")
	if err != nil {
		if o, err = memberOffset(spec, "task_struct", "cpu"); err != nil {
			return nil, err
		}
	}
	l.CPU = o
	if l.SignalThreadHead, err = memberOffset(spec, "signal_struct", "thread_head"); err != nil {
		return nil, err
	}
	n, err := memberSize(spec, "task_struct", "comm")
	if err != nil {
		return nil, err
	}
	if n == 0 || n > 64 {
		return nil, errf("btf", ErrFormat, "task_struct.comm is %d bytes", n)
	}
	l.CommLen = n
	if o, err := memberOffset(spec, "pcpu_hot", "current_task"); err == nil {
		l.PcpuHotCurrent = int64(o)
	}
	return l, nil
}
