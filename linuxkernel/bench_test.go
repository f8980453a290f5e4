package linuxkernel

import "testing"

// BenchmarkFindVMCoreInfo is the worst case of the RAM scan: 512 MiB
// with the page in the last 4 KiB.
func BenchmarkFindVMCoreInfo(b *testing.B) {
	mem := make(BytesMem, 512<<20)
	copy(mem[len(mem)-pageSize:], "OSRELEASE=6.1.0-bench\nKERNELOFFSET=0\n")
	b.SetBytes(int64(len(mem)))
	for b.Loop() {
		if _, err := FindVMCoreInfo(mem); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenSynthetic is Open over the synthetic guest (scan of 24
// MiB, page walks, kallsyms, BTF).
func BenchmarkOpenSynthetic(b *testing.B) {
	k := newSynKernel(b)
	for b.Loop() {
		if _, err := Open(k.mem, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
