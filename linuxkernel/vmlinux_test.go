package linuxkernel

// The real Debian kernel's BTF, from the nested tier's cached bzImage: the
// xz payload decompressed to the (stripped) vmlinux, its .BTF section
// parsed and task_struct's layout resolved. Skipped without the cache.

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// vmlinuxFromBzImage extracts the kernel ELF from a bzImage: the setup
// header's payload_offset/payload_length (boot protocol >= 2.08) locate
// the compressed payload after the real-mode setup sectors.
func vmlinuxFromBzImage(t testing.TB, bz []byte) []byte {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		t.Fatal("not a bzImage")
	}
	setup := int(bz[0x1f1])
	if setup == 0 {
		setup = 4
	}
	pm := (setup + 1) * 512
	off := pm + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off+n > len(bz) || n < 6 {
		t.Fatalf("payload [%d,+%d) outside %d bytes", off, n, len(bz))
	}
	payload := bz[off : off+n]
	if !bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}) {
		t.Skipf("payload magic % x is not xz", payload[:6])
	}
	// The kernel's xz stream has the x86 BCJ filter before LZMA2, which
	// github.com/ulikunitz/xz does not implement: xz-utils decodes it.
	xzBin, err := exec.LookPath("xz")
	if err != nil {
		t.Skip("no xz binary (xz-utils) to decompress the payload")
	}
	cmd := exec.Command(xzBin, "-dc")
	cmd.Stdin = bytes.NewReader(payload)
	var out bytes.Buffer
	cmd.Stdout = &out
	// xz reports trailing garbage after the stream (the payload length
	// includes padding); the ELF is complete by then.
	if err := cmd.Run(); err != nil && out.Len() == 0 {
		t.Fatalf("xz -dc: %v", err)
	}
	return out.Bytes()
}

// debianBTF is the cached Debian kernel's BTF: its raw size, the parsed
// spec and its type count (the test skips without the cache).
func debianBTF(t *testing.T) (int, *btf.Spec, int) {
	t.Helper()
	bz, err := os.ReadFile(filepath.Join(nestedKernelDir(), "vmlinuz"))
	if err != nil {
		t.Skipf("no cached Debian kernel (%v): run test/nested/prepare.sh", err)
	}
	f, err := elf.NewFile(bytes.NewReader(vmlinuxFromBzImage(t, bz)))
	if err != nil {
		t.Fatal(err)
	}
	sec := f.Section(".BTF")
	if sec == nil {
		t.Fatal("vmlinux has no .BTF")
	}
	raw, err := sec.Data()
	if err != nil {
		t.Fatal(err)
	}
	spec, n, err := ParseBTF(raw)
	if err != nil {
		t.Fatal(err)
	}
	return len(raw), spec, n
}

func TestDebianVmlinuxBTF(t *testing.T) {
	size, spec, n := debianBTF(t)
	l, err := taskLayout(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf(".BTF %d bytes, %d types; task_struct layout %+v", size, n, *l)
	if n < 10000 || l.CommLen != 16 || l.PcpuHotCurrent != -1 || l.Tasks == 0 || l.ThreadSP <= l.Comm {
		t.Errorf("implausible for Linux 6.1: %d types, %+v", n, *l)
	}
	if _, err := memberOffset(spec, "task_struct", "no_such_member"); !isKind(err, ErrNotFound) {
		t.Errorf("missing member: %v", err)
	}
}
