package guestkernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"klp-kvm/guestkernel/layout"
)

var fentryNop = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}

type image struct {
	f     *elf.File
	syms  []elf.Symbol
	text  *elf.Section
	tdata []byte
	named map[string]elf.Symbol // globals, and locals that are unique
}

func openImage(t testing.TB, b []byte) *image {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	im := &image{f: f, syms: syms, text: f.Section(".text"), named: map[string]elf.Symbol{}}
	if im.text == nil {
		t.Fatal("no .text")
	}
	if im.tdata, err = im.text.Data(); err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		im.named[s.Name] = s
	}
	return im
}

func (im *image) addr(t testing.TB, name string) uint64 {
	t.Helper()
	s, ok := im.named[name]
	if !ok {
		t.Fatalf("no symbol %s", name)
	}
	return s.Value
}

func (im *image) code(s elf.Symbol) []byte {
	off := s.Value - im.text.Addr
	if s.Value < im.text.Addr || off+s.Size > uint64(len(im.tdata)) {
		return nil
	}
	return im.tdata[off : off+s.Size]
}

// mcountLoc reads __mcount_loc through its start/stop symbols.
func (im *image) mcountLoc(t testing.TB) map[uint64]bool {
	start, stop := im.addr(t, "__start_mcount_loc"), im.addr(t, "__stop_mcount_loc")
	if start%8 != 0 || (stop-start)%8 != 0 {
		t.Fatalf("__mcount_loc [%#x, %#x) not 8-aligned", start, stop)
	}
	sec := im.f.Section("__mcount_loc")
	if sec == nil || sec.Addr != start || sec.Addr+sec.Size != stop {
		t.Fatalf("__mcount_loc section does not match its symbols")
	}
	d, err := sec.Data()
	if err != nil {
		t.Fatal(err)
	}
	m := map[uint64]bool{}
	for i := 0; i+8 <= len(d); i += 8 {
		m[binary.LittleEndian.Uint64(d[i:])] = true
	}
	return m
}

// TestImageStaticChecks: every traced function starts with the fentry NOP
// and is listed in __mcount_loc; notrace and asm functions are not; no
// compiler clones; no endbr64; the ABI structures are initialised.
func TestImageStaticChecks(t *testing.T) {
	im := openImage(t, Vmlinux())
	if im.f.Machine != elf.EM_X86_64 || im.f.Type != elf.ET_EXEC {
		t.Fatalf("machine %v type %v", im.f.Machine, im.f.Type)
	}
	if im.text.Addr != 0xffffffff81000000 {
		t.Errorf(".text at %#x, want 0xffffffff81000000", im.text.Addr)
	}
	for _, p := range im.f.Progs {
		if p.Type == elf.PT_LOAD && p.Vaddr-p.Paddr != layout.KernelMapVirt {
			t.Errorf("segment at %#x loads at %#x: want virt - %#x (layout.KernelMapVirt)", p.Vaddr, p.Paddr, uint64(layout.KernelMapVirt))
		}
	}
	if im.f.Progs[0].Paddr != 16<<20 {
		t.Errorf("first segment loads at %#x, want 16 MiB", im.f.Progs[0].Paddr)
	}
	mc := im.mcountLoc(t)
	notraceLo, notraceHi := im.addr(t, "__notrace_text_start"), im.addr(t, "__notrace_text_end")
	textLo := im.addr(t, "_text")
	clone := regexp.MustCompile(`\.(cold|part|isra|constprop|lto_priv|localalias)`)
	traced, untraced := 0, 0
	funcAt := map[uint64]bool{}
	for _, s := range im.syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		funcAt[s.Value] = true
		if clone.MatchString(s.Name) || strings.Contains(s.Name, ".") {
			t.Errorf("%s: compiler clone in the image", s.Name)
		}
		code := im.code(s)
		if code == nil || s.Size == 0 {
			t.Errorf("%s: no code in .text (size %d)", s.Name, s.Size)
			continue
		}
		if bytes.HasPrefix(code, []byte{0xf3, 0x0f, 0x1e, 0xfa}) {
			t.Errorf("%s starts with endbr64", s.Name)
		}
		notrace := s.Value >= textLo && s.Value < notraceHi // .text.entry (asm) and .text.notrace
		if notrace {
			untraced++
			if mc[s.Value] {
				t.Errorf("%s is notrace but listed in __mcount_loc", s.Name)
			}
			continue
		}
		traced++
		if !bytes.HasPrefix(code, fentryNop) {
			t.Errorf("%s: starts with % x, not the fentry NOP", s.Name, code[:min(5, len(code))])
		}
		if !mc[s.Value] {
			t.Errorf("%s: not in __mcount_loc", s.Name)
		}
	}
	for a := range mc {
		if !funcAt[a] {
			t.Errorf("__mcount_loc entry %#x is not a function start", a)
		}
	}
	if traced < 1100 || untraced < 10 || notraceLo < textLo {
		t.Errorf("%d traced, %d untraced functions: implausible", traced, untraced)
	}
	t.Logf("%d traced functions, %d notrace/asm, %d mcount entries", traced, untraced, len(mc))

	// names other packages depend on
	for _, n := range []string{"cmdline_proc_show", "seq_printf", "printk", "msleep", "klp_pair_a", "klp_pair_b",
		"klp_park_fn", "klp_guest_abi", "klp_sysfs_state", "saved_command_line", "bench_fn_0000", "bench_fn_1023",
		"klp_callback_counter", "klp_shadow_get", "klp_shadow_alloc", "klp_shadow_get_or_alloc", "klp_shadow_free",
		"klp_shadow_free_all", "kmalloc", "kzalloc", "kfree", "jiffies", "dummy_alloc", "dummy_free", "dummy_check"} {
		if s, ok := im.named[n]; !ok || elf.ST_BIND(s.Info) != elf.STB_GLOBAL {
			t.Errorf("%s: missing or not global", n)
		}
	}
	dups := 0
	for _, s := range im.syms {
		if s.Name == "klp_dup_fn" && elf.ST_BIND(s.Info) == elf.STB_LOCAL && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			dups++
		}
	}
	if dups != 2 {
		t.Errorf("%d local klp_dup_fn, want 2", dups)
	}
	for i := 0; i < 1024; i++ {
		if _, ok := im.named[fmt.Sprintf("bench_fn_%04d", i)]; !ok {
			t.Errorf("bench_fn_%04d missing", i)
		}
	}

	// the ABI structures are valid before the guest runs
	abi := im.read(t, "klp_guest_abi", GuestABISize)
	a, err := DecodeGuestABI(abi, im.addr(t, "klp_guest_abi"))
	if err != nil {
		t.Fatal(err)
	}
	if a.TaskTable != im.addr(t, "task_table") || a.IRQFrameRet != im.addr(t, "irq_frame_ret") ||
		a.SwitchTo != im.addr(t, "klp_switch_to") || a.CPUCurrent != im.addr(t, "cpu_current_task") {
		t.Errorf("klp_guest_abi addresses do not match the symbols: %+v", a)
	}
	if err := checkSysfsHeader(im.read(t, "klp_sysfs_state", SysfsHeaderSize), 0); err != nil {
		t.Error(err)
	}
}

func (im *image) read(t testing.TB, name string, n int) []byte {
	t.Helper()
	a := im.addr(t, name)
	for _, p := range im.f.Progs {
		if p.Type == elf.PT_LOAD && a >= p.Vaddr && a+uint64(n) <= p.Vaddr+p.Filesz {
			b := make([]byte, n)
			if _, err := p.ReadAt(b, int64(a-p.Vaddr)); err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("%s not in a loaded segment", name)
	return nil
}

// TestImageDecodes decodes every function of the image with x86asm and
// refuses anything outside the integer ring-0 set docs/architecture.md allows.
func TestImageDecodes(t *testing.T) {
	im := openImage(t, Vmlinux())
	banned := map[string]bool{"SYSCALL": true, "SYSRET": true, "SYSENTER": true, "CPUID": false}
	n := 0
	for _, s := range im.syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		code := im.code(s)
		for off := 0; off < len(code); {
			inst, err := x86asm.Decode(code[off:], 64)
			if err != nil {
				t.Errorf("%s+%#x: % x: %v", s.Name, off, code[off:min(off+8, len(code))], err)
				break
			}
			for _, a := range inst.Args {
				if r, ok := a.(x86asm.Reg); ok && (r >= x86asm.X0 && r <= x86asm.X15 || r >= x86asm.M0 && r <= x86asm.M7 || r >= x86asm.F0 && r <= x86asm.F7) {
					t.Errorf("%s+%#x: %v uses FPU/MMX/SSE", s.Name, off, inst)
				}
			}
			if banned[inst.Op.String()] {
				t.Errorf("%s+%#x: %v", s.Name, off, inst)
			}
			off += inst.Len
			n++
		}
	}
	t.Logf("%d instructions decoded", n)
}

// TestReproducibleBuild rebuilds the kernel and its patches into a
// temporary directory and compares them with the committed prebuilt image
// and objects, byte for byte.
func TestReproducibleBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: rebuild skipped")
	}
	out, err := exec.Command("gcc", "--version").Output()
	if err != nil || !bytes.Contains(out, []byte("12.2.0")) {
		t.Skip("gcc 12.2 not present: reproducible build not checked")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make: reproducible build not checked")
	}
	dir := t.TempDir()
	cmd := exec.Command("make", "--no-print-directory", "O="+dir, filepath.Join(dir, "vmlinux"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make: %v\n%s", err, b)
	}
	got, err := os.ReadFile(filepath.Join(dir, "vmlinux"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, Vmlinux()) {
		t.Fatalf("rebuilt vmlinux (%d bytes) differs from prebuilt/vmlinux (%d bytes): run make -C guestkernel prebuilt", len(got), len(Vmlinux()))
	}
	// The patches, livepatch-bench.o (from the generated source) among
	// them, each against its committed copy.
	pdir := filepath.Join(dir, "patches")
	cmd = exec.Command("make", "--no-print-directory", "-C", "patches", "O="+pdir, "all")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make -C patches: %v\n%s", err, b)
	}
	built, _ := filepath.Glob(filepath.Join(pdir, "*.o"))
	committed, _ := filepath.Glob("prebuilt/patches/*.o")
	if len(built) == 0 || len(built) != len(committed) {
		t.Fatalf("%d patch objects built, %d in prebuilt/patches", len(built), len(committed))
	}
	for _, o := range built {
		want, err := os.ReadFile(filepath.Join("prebuilt/patches", filepath.Base(o)))
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(o); !bytes.Equal(got, want) {
			t.Errorf("rebuilt %s differs from prebuilt/patches: run make -C guestkernel prebuilt", filepath.Base(o))
		}
	}
}
