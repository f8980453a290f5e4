package guestkernel

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// physFake is fakeMem with physical access: guest-physical addresses are
// the virtual ones plus shift, mapped by 4 KiB pages; walks counts the
// translations.
type physFake struct {
	*fakeMem
	shift uint64
	walks int
}

func (m *physFake) VirtPhys(va uint64) (uint64, uint64, error) {
	m.walks++
	if _, err := m.find(va, 1); err != nil {
		return 0, 0, err
	}
	return va + m.shift, 0x1000 - va&0xfff, nil
}

func (m *physFake) ReadPhys(pa uint64, b []byte) error {
	return m.ReadVirt(pa-m.shift, b)
}

// parkedGuest is TestTasksAndWalk's guest: task 2 parked five calls deep.
func parkedGuest(t *testing.T) (*fakeGuest, *physFake, *Guest) {
	g := newFakeGuest(t)
	s := g.syms
	stack := make([]byte, StackSize)
	g.mem.add(stackBase, stack)
	rets := []uint64{fnAddr(t, s, "schedule", 0x40), fnAddr(t, s, "sleep_until", 0x30), fnAddr(t, s, "klp_park_fn", 0x20),
		fnAddr(t, s, "parker_thread", 0x10), fnAddr(t, s, "klp_task_start", 0x9)}
	rbp := buildStack(stack, stackBase, rets)
	g.setTask(0, TaskRunning, 0, "idle/0", 0, 0, 0, 0, stackBase+StackSize, StackSize)
	g.setTask(1, TaskDead, 5, "gone", -1, 0, 0, 0, 0, 0)
	g.setTask(2, TaskSleeping, 7, "parker\x01", -1, rbp-48, rbp, fnAddr(t, s, "klp_switch_to", 0x20), stackBase, StackSize)
	pm := &physFake{fakeMem: g.mem, shift: 1 << 40}
	gst, err := Open(pm, s)
	if err != nil {
		t.Fatal(err)
	}
	return g, pm, gst
}

// A View walks the page tables once per stack page, not once per frame
// (five frames in one page: one walk), until Reset; it reads what the
// Guest reads.
func TestViewWalksOncePerPage(t *testing.T) {
	_, pm, gst := parkedGuest(t)
	want, err := gst.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	wantFrames, err := gst.WalkTask(want[1], 0)
	if err != nil {
		t.Fatal(err)
	}
	v := gst.NewView()
	tasks, err := v.Tasks()
	if err != nil || fmt.Sprint(tasks) != fmt.Sprint(want) {
		t.Fatalf("view tasks %v %v, want %v", tasks, err, want)
	}
	pm.walks = 0
	w0 := v.Walks()
	frames, err := v.Guest().WalkTask(tasks[1], 0)
	if err != nil || fmt.Sprint(frames) != fmt.Sprint(wantFrames) {
		t.Fatalf("view walk %v %v, want %v", frames, err, wantFrames)
	}
	if pm.walks != 1 {
		t.Fatalf("a walk of %d frames in one page: %d page-table walks, want 1", len(frames), pm.walks)
	}
	if _, err := v.Guest().WalkTask(tasks[1], 0); err != nil || pm.walks != 1 {
		t.Fatalf("the same walk again: %d page-table walks (%v), want none more", pm.walks, err)
	}
	v.Reset()
	if _, err := v.Guest().WalkTask(tasks[1], 0); err != nil || pm.walks != 2 {
		t.Fatalf("after Reset: %d page-table walks (%v), want one more", pm.walks, err)
	}
	if v.Walks()-w0 != 2 {
		t.Fatalf("View.Walks counted %d, want 2", v.Walks()-w0)
	}
}

// A View checks everything a Guest checks: a frame pointer out of the
// stack is refused, a page that is not mapped is an error, not a read.
func TestViewKeepsBounds(t *testing.T) {
	g, _, gst := parkedGuest(t)
	v := gst.NewView()
	tasks, err := v.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	bad := tasks[1]
	bad.SavedRBP = stackBase + StackSize + 0x1000
	if _, err := v.Guest().WalkTask(bad, 0); !errors.Is(err, ErrBounds) {
		t.Fatalf("frame pointer above the stack: %v", err)
	}
	delete(g.mem.regions, stackBase)
	v.Reset()
	if _, err := v.Guest().WalkTask(tasks[1], 0); !errors.Is(err, ErrMemory) {
		t.Fatalf("unmapped stack: %v", err)
	}
}

// Reading the task table through a View allocates nothing once the names
// are known; a new name is read as such.
func TestViewTasksAllocatesNothing(t *testing.T) {
	g, _, gst := parkedGuest(t)
	v := gst.NewView()
	if _, err := v.Tasks(); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		v.Reset()
		if _, err := v.Tasks(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("the task table read allocates %.0f times", allocs)
	}
	g.setTask(2, TaskSleeping, 7, "renamed\x00", -1, 0, 0, 0, stackBase, StackSize)
	tasks, err := v.Tasks()
	if err != nil || len(tasks) != 2 || tasks[1].Name != "renamed" {
		t.Fatalf("after a rename: %v %v", tasks, err)
	}
	g.table[int(g.abi.TaskStride)*2+int(g.abi.OffState)] = 9
	if _, err := v.Tasks(); err == nil || !strings.Contains(err.Error(), "state 9") {
		t.Fatalf("bad state: %v", err)
	}
}
