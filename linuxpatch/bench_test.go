package linuxpatch

import (
	"sync"
	"testing"
)

// BenchmarkParseLink is the host's cost of loading livepatch-sample.ko:
// parse, find and walk the klp structs, place, relocate.
func BenchmarkParseLink(b *testing.B) {
	data := readKo(b, sampleKo)
	spec := testSpec(b)
	resolve := mapResolver(kernelSyms, nil)
	b.ReportAllocs()
	for b.Loop() {
		m, err := Parse(data, spec)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Link(Config{Base: testBase, Resolve: resolve}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConcurrentLink: Link does not modify the Module, so one parse can
// be linked at several bases at once (run with -race).
func TestConcurrentLink(t *testing.T) {
	m, err := Parse(readKo(t, staticKo), testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	addrs := make([]uint64, 8)
	for i := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			im, err := m.Link(Config{Base: testBase + uint64(i)*0x10000, Resolve: mapResolver(kernelSyms, nil)})
			if err != nil {
				t.Error(err)
				return
			}
			addrs[i] = im.Funcs[0].NewAddr - uint64(i)*0x10000
		}()
	}
	wg.Wait()
	for i, a := range addrs {
		if a != addrs[0] {
			t.Errorf("link %d: new function at base+%#x, link 0 at base+%#x", i, a-testBase, addrs[0]-testBase)
		}
	}
}
