package ftrace

import "testing"

// eqFake is fakeMem with kvm.Machine's EqualVirt (an in-place compare);
// equals counts its calls, reads the ReadVirt calls.
type eqFake struct {
	*fakeMem
	equals, reads int
}

func (m *eqFake) EqualVirt(va uint64, b []byte) (bool, error) {
	m.equals++
	p, err := m.find(va, len(b))
	if err != nil {
		return false, err
	}
	return string(p) == string(b), nil
}

func (m *eqFake) ReadVirt(va uint64, b []byte) error {
	m.reads++
	return m.fakeMem.ReadVirt(va, b)
}

// setupAs is setup, the tracer poking through eqFake when inPlace.
func setupAs(t *testing.T, nsites int, inPlace bool) (*fakeMem, *Tracer, *eqFake) {
	t.Helper()
	m, tr := setup(t, nsites)
	if !inPlace {
		return m, tr, nil
	}
	em := &eqFake{fakeMem: m}
	tr.mem = em
	return m, tr, em
}

// With an in-place compare, a commit whose cluster is as snapshotted
// reads nothing inside the pause: one compare, one write.
func TestCommitComparesInPlace(t *testing.T) {
	m, tr, em := setupAs(t, 64, true)
	var ups []Update
	for i := 0; i < 64; i++ {
		ups = append(ups, Update{textBase + uint64(i*64), 0xffffffffa0000100})
	}
	x, err := tr.Prepare(ups)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Stage(); err != nil {
		t.Fatal(err)
	}
	m.paused = true
	em.equals, em.reads, m.writes = 0, 0, 0
	if err := x.Commit(); err != nil {
		t.Fatal(err)
	}
	if em.equals != 1 || em.reads != 0 || m.writes != 1 {
		t.Fatalf("commit of one cluster: %d compares, %d reads, %d writes; want 1, 0, 1", em.equals, em.reads, m.writes)
	}
	x.Finish()
}
