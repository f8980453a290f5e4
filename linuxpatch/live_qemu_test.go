package linuxpatch

// Linux's own module loader against this package, on the real kernel:
// Debian 6.1.0-57-amd64 boots under QEMU TCG with this test binary as
// /init; the guest loads livepatch-sample.ko and then klp-static.ko (its
// call to a static function rewritten into a .klp.rela relocation) with
// init_module(2), and reports where Linux put each section, the loaded
// .text bytes (read through /proc/kcore) and the kallsyms addresses of the
// symbols the modules use. The host links the same .ko files with a
// resolver over those addresses and checks that, moved to Linux's section
// addresses, each .text is Linux's byte for byte.
//
// Needs qemu-system-x86_64 and the nested tier's kernel cache, and a
// static test binary (CGO_ENABLED=0); runs only with
// KLP_KVM_LIVE_QEMU=1 (a boot is tens of seconds of TCG).

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/elfpatch"
	"klp-kvm/initramfs"
	"klp-kvm/linuxkernel"
)

const liveMarker = "KLPLINK"

// liveSyms are the kernel symbols the guest reports.
var liveSyms = []string{"seq_printf", "seq_puts", "__x86_return_thunk", "klp_enable_patch", "__fentry__", "x86_return_thunk",
	"cmdline_proc_show", "version_proc_show", "loadavg_proc_show"}

func TestMain(m *testing.M) {
	if os.Getpid() == 1 && os.Getenv("KLP_LINK_GUEST") == "1" {
		linkGuest()
	}
	os.Exit(m.Run())
}

// linkGuest runs as PID 1 in the guest, then powers it off.
func linkGuest() {
	out := os.Stdout
	say := func(format string, args ...any) { fmt.Fprintf(out, liveMarker+" "+format+"\n", args...) }
	defer func() {
		say("done")
		syscall.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		select {}
	}()
	for _, m := range [][2]string{{"proc", "/proc"}, {"sysfs", "/sys"}} {
		if err := syscall.Mount(m[0], m[1], m[0], 0, ""); err != nil {
			say("error mount %s: %v", m[1], err)
			return
		}
	}
	// The modules the host put in the initramfs, in name order: each
	// loaded by Linux, then its sections reported.
	kos, _ := filepath.Glob("/mod-*.ko")
	type loaded struct {
		name string
		secs map[string]uint64
		text uint64
	}
	var mods []loaded
	for _, path := range kos {
		ko, err := os.ReadFile(path)
		if err != nil {
			say("error %v", err)
			return
		}
		if err := unix.InitModule(ko, ""); err != nil {
			say("error init_module %s: %v", path, err)
			return
		}
		obj, err := elfpatch.ParseObjectFile(ko)
		if err != nil {
			say("error %v", err)
			return
		}
		var name string
		var textSize uint64
		for _, sec := range obj.Sections() {
			if sec.Name == ".text" {
				textSize = sec.Size
			}
			if sec.Name == ".modinfo" {
				for _, kv := range strings.Split(string(obj.SectionData(sec.Index)), "\x00") {
					if v, ok := strings.CutPrefix(kv, "name="); ok {
						name = v
					}
				}
			}
		}
		dir := "/sys/module/" + name + "/sections"
		ents, err := os.ReadDir(dir)
		if err != nil {
			say("error %v", err)
			return
		}
		l := loaded{name: name, secs: map[string]uint64{}, text: textSize}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				continue
			}
			a, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), 16, 64)
			if err != nil {
				continue
			}
			l.secs[e.Name()] = a
			say("section %s %s %x", name, e.Name(), a)
		}
		mods = append(mods, l)
	}
	// Whether the kernel uses a return thunk (X86_FEATURE_RETHUNK): only
	// for the retbleed and SRSO mitigations.
	affected := false
	for _, v := range []string{"retbleed", "spec_rstack_overflow"} {
		b, err := os.ReadFile("/sys/devices/system/cpu/vulnerabilities/" + v)
		if err == nil && !strings.HasPrefix(string(b), "Not affected") {
			affected = true
		}
		say("vuln %s %q", v, strings.TrimSpace(string(b)))
	}
	say("rethunk %v", affected)
	kallsyms, _ := os.ReadFile("/proc/kallsyms")
	want := map[string]bool{}
	for _, s := range liveSyms {
		want[s] = true
	}
	var thunkVar uint64
	for _, l := range strings.Split(string(kallsyms), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && want[f[2]] && len(f) == 3 {
			say("sym %s %s %s", f[0], f[1], f[2])
			if f[2] == "x86_return_thunk" {
				thunkVar, _ = strconv.ParseUint(f[0], 16, 64)
			}
		}
	}
	kcore, err := elf.Open("/proc/kcore")
	if err != nil {
		say("error kcore: %v", err)
		return
	}
	read := func(addr uint64, n int) ([]byte, error) {
		for _, p := range kcore.Progs {
			if p.Type == elf.PT_LOAD && addr >= p.Vaddr && addr+uint64(n) <= p.Vaddr+p.Memsz {
				b := make([]byte, n)
				_, err := p.ReadAt(b, int64(addr-p.Vaddr))
				return b, err
			}
		}
		return nil, fmt.Errorf("%#x not in /proc/kcore", addr)
	}
	for _, l := range mods {
		text, err := read(l.secs[".text"], int(l.text))
		if err != nil {
			say("error %v", err)
			return
		}
		say("text %s %s", l.name, hex.EncodeToString(text))
	}
	if thunkVar != 0 {
		if b, err := read(thunkVar, 8); err == nil {
			say("thunk %x", binary.LittleEndian.Uint64(b))
		}
	}
}

type linkReport struct {
	secs    map[string]map[string]uint64 // module -> section -> address
	syms    []linuxkernel.Symbol
	text    map[string][]byte // module -> its loaded .text
	thunk   uint64
	rethunk bool
	vulns   []string
	errors  []string
	console []string
}

func bootLinkGuest(t *testing.T, cpu, extraCmdline string, mods [][]byte) *linkReport {
	if os.Getenv("KLP_KVM_LIVE_QEMU") != "1" {
		t.Skip("set KLP_KVM_LIVE_QEMU=1 to boot the Debian kernel under QEMU TCG")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	dir := os.Getenv("KLP_KVM_NESTED_CACHE")
	if dir == "" {
		xdg := os.Getenv("XDG_CACHE_HOME")
		if xdg == "" {
			home, _ := os.UserHomeDir()
			xdg = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(xdg, "klp-kvm", "nested")
	}
	kernel := filepath.Join(dir, "current", "vmlinuz")
	if _, err := os.Stat(kernel); err != nil {
		t.Skipf("no kernel cache (%v)", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if f, err := elf.Open(exe); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Skip("test binary is dynamically linked; run with CGO_ENABLED=0")
			}
		}
		f.Close()
	}
	a := initramfs.New()
	for _, d := range []string{"dev", "proc", "sys"} {
		if err := a.AddDir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.AddCharDev("dev/console", 0o600, 5, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.AddFile("init", exe); err != nil {
		t.Fatal(err)
	}
	for i, ko := range mods {
		if err := a.AddBytes(fmt.Sprintf("mod-%d.ko", i), ko, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	initrd := filepath.Join(t.TempDir(), "initrd")
	var buf bytes.Buffer
	if err := a.Write(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "512M", "-cpu", cpu,
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet KLP_LINK_GUEST=1 "+extraCmdline,
		"-display", "none", "-serial", "stdio", "-no-reboot")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	rep := &linkReport{secs: map[string]map[string]uint64{}, text: map[string][]byte{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			rep.console = append(rep.console, line)
			i := strings.Index(line, liveMarker+" ")
			if i < 0 {
				continue
			}
			f := strings.Fields(line[i+len(liveMarker)+1:])
			switch {
			case len(f) == 4 && f[0] == "section":
				a, _ := strconv.ParseUint(f[3], 16, 64)
				if rep.secs[f[1]] == nil {
					rep.secs[f[1]] = map[string]uint64{}
				}
				rep.secs[f[1]][f[2]] = a
			case len(f) == 4 && f[0] == "sym":
				a, _ := strconv.ParseUint(f[1], 16, 64)
				rep.syms = append(rep.syms, linuxkernel.Symbol{Name: f[3], Addr: a, Type: f[2][0]})
			case len(f) == 3 && f[0] == "text":
				rep.text[f[1]], _ = hex.DecodeString(f[2])
			case len(f) == 2 && f[0] == "rethunk":
				rep.rethunk = f[1] == "true"
			case len(f) >= 2 && f[0] == "vuln":
				rep.vulns = append(rep.vulns, strings.Join(f[1:], " "))
			case len(f) == 2 && f[0] == "thunk":
				rep.thunk, _ = strconv.ParseUint(f[1], 16, 64)
			case len(f) >= 1 && f[0] == "error":
				rep.errors = append(rep.errors, strings.Join(f[1:], " "))
			case len(f) == 1 && f[0] == "done":
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("no report from the guest after 5 minutes; console tail:\n%s", strings.Join(rep.console[max(0, len(rep.console)-30):], "\n"))
	}
	t.Logf("guest reported after %v", time.Since(start).Round(time.Millisecond))
	if len(rep.errors) > 0 || len(rep.text) != len(mods) {
		t.Fatalf("guest errors %q; console tail:\n%s", rep.errors, strings.Join(rep.console[max(0, len(rep.console)-30):], "\n"))
	}
	return rep
}

func TestLiveLinuxLoader(t *testing.T) {
	t.Run("nokaslr", func(t *testing.T) { testLiveLinuxLoader(t, "max", "nokaslr") })
	t.Run("kaslr", func(t *testing.T) { testLiveLinuxLoader(t, "max", "") })
	// An AMD Zen CPU model: affected by retbleed and SRSO, so the kernel
	// has a return thunk and points the module's returns at it.
	t.Run("zen", func(t *testing.T) { testLiveLinuxLoader(t, "EPYC", "") })
}

func testLiveLinuxLoader(t *testing.T, cpu, extraCmdline string) {
	// The sample, then klp-static with its call to the static
	// cmdline_proc_show as kpatch-build writes it (Linux applies that
	// .klp.rela section in klp_enable_patch; klp-static replaces the
	// sample, and its nfsd object waits for nfsd).
	sample := readKo(t, sampleKo)
	static := staticKlp(t, ".klp.sym.vmlinux.cmdline_proc_show,1", VmlinuxObject)
	rep := bootLinkGuest(t, cpu, extraCmdline, [][]byte{sample, static})
	syms := linuxkernel.NewSymbols(rep.syms)
	for _, c := range []struct {
		name string
		ko   []byte
	}{{"livepatch_sample", sample}, {"klp_static", static}} {
		m, err := Parse(c.ko, testSpec(t))
		if err != nil {
			t.Fatal(err)
		}
		// Linux's apply_returns points every return at the thunk the
		// kernel chose, or makes it a plain ret when the CPU needs
		// none; the same here.
		cfg := Config{Base: testBase, Resolve: VmlinuxResolver(syms), KernelRelease: "6.1.0-57-amd64",
			Loaded: func(obj string) bool { return false }}
		if rep.rethunk {
			cfg.ReturnThunk = rep.thunk
		} else {
			cfg.PlainReturns = true
		}
		im, err := m.Link(cfg)
		if err != nil {
			t.Fatal(err)
		}
		secs := rep.secs[c.name]
		// Move our .text to Linux's addresses: every relocation
		// recomputed with Linux's place and, for the module's own
		// targets, Linux's section address.
		var text []byte
		for _, s := range im.Sections {
			if s.Name == ".text" {
				text = append([]byte{}, readImage(t, im, s.Addr, int(s.Size))...)
			}
		}
		linuxAddr := func(ours uint64) uint64 {
			for _, s := range im.Sections {
				if ours >= s.Addr && ours < s.Addr+max(s.Size, 1) {
					la, ok := secs[s.Name]
					if !ok {
						t.Fatalf("Linux did not report section %s", s.Name)
					}
					return la + (ours - s.Addr)
				}
			}
			t.Fatalf("%#x is in none of our sections", ours)
			return 0
		}
		klp := 0
		for _, r := range im.Relocs {
			if r.Section != ".text" {
				continue
			}
			if r.Source == "klp" {
				klp++
			}
			S := r.Target
			if r.Source == "module" {
				S = linuxAddr(r.Target)
			}
			P := secs[".text"] + r.Offset
			v := S + uint64(r.Addend)
			switch r.Type {
			case "R_X86_64_PLT32", "R_X86_64_PC32", "R_X86_64_PC64":
				v -= P
			}
			switch r.Type {
			case "R_X86_64_64", "R_X86_64_PC64":
				binary.LittleEndian.PutUint64(text[r.Offset:], v)
			default:
				binary.LittleEndian.PutUint32(text[r.Offset:], uint32(v))
			}
		}
		if !bytes.Equal(text, rep.text[c.name]) {
			t.Errorf("%s: .text differs from Linux's loader:\n ours  % x\n Linux % x", c.name, text, rep.text[c.name])
		}
		t.Logf("%s: Linux placed .text at %#x; %d bytes compared, %d .klp.rela relocations among them", c.name, secs[".text"], len(text), klp)
	}
	t.Logf("%v; x86_return_thunk %#x, rethunk %v", rep.vulns, rep.thunk, rep.rethunk)
}
