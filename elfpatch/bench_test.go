package elfpatch

import (
	"testing"
)

// BenchmarkParseKernelFixture: the gcc-built fixture (1k functions).
func BenchmarkParseKernelFixture(b *testing.B) {
	data := readFile(b, fixtureKernelPath)
	b.SetBytes(int64(len(data)))
	var nsyms int
	for b.Loop() {
		k, err := ParseKernel(data)
		if err != nil {
			b.Fatal(err)
		}
		nsyms = len(k.Symbols())
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(nsyms), "ns/symbol")
}

// BenchmarkParseKernel100k: a synthesized ~51 MB vmlinux-class ELF with
// 106k symbols and 100k fentry sites (target: < 1 s per load).
func BenchmarkParseKernel100k(b *testing.B) {
	data := synthKernel(100000, 512)
	b.SetBytes(int64(len(data)))
	var nsyms, nsites int
	for b.Loop() {
		k, err := ParseKernel(data)
		if err != nil {
			b.Fatal(err)
		}
		nsyms, nsites = len(k.Symbols()), len(k.FentrySites())
	}
	if nsites != 100000 {
		b.Fatalf("%d sites", nsites)
	}
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(per/float64(nsyms), "ns/symbol")
	b.ReportMetric(per/1e6, "ms/load")
	b.ReportMetric(float64(len(data))/1e6, "MB")
}

// BenchmarkLayoutBench1024: relocating the 1024-function patch against the
// fixture kernel (old functions resolved and checked too).
func BenchmarkLayoutBench1024(b *testing.B) {
	k := fixtureKernel(b)
	p, err := ParsePatchFile(samplePath("livepatch-bench"))
	if err != nil {
		b.Fatal(err)
	}
	var nrel int
	for b.Loop() {
		im, err := p.Layout(patchBase, k)
		if err != nil {
			b.Fatal(err)
		}
		nrel = len(im.Relocs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(nrel), "ns/reloc")
	b.ReportMetric(float64(nrel), "relocs")
}

// BenchmarkParsePatchBench1024: parsing the 1024-function patch object.
func BenchmarkParsePatchBench1024(b *testing.B) {
	data := readFile(b, samplePath("livepatch-bench"))
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParsePatch(data); err != nil {
			b.Fatal(err)
		}
	}
}
