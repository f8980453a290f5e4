package linux

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"klp-kvm/internal/klpbin"
	"klp-kvm/kvm"
	"klp-kvm/linuxkernel"
)

// TestLinuxCLI is the user's story with the binary: `klp-kvm run --kernel
// vmlinuz` (no --initrd: klp-kvm's own initramfs), then exec, status,
// inspect --live, the live patch story of issue 17 (patch load of
// Linux's livepatch-sample.ko, list, disable, enable, unload) and stop
// against its API socket.
func TestLinuxCLI(t *testing.T) {
	skipNested(t)
	kernelImage(t) // skips without a kernel
	kernel := os.Getenv("KLP_E2E_LINUX_KERNEL")
	bin := klpbin.Path(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	cmdline := kvm.DefaultLinuxCmdline + " quiet klp.token=cli" + platformArgs()
	var stderr bytes.Buffer
	run := exec.Command(bin, "run", "--engine", "kvm", "--kernel", kernel, "--cpus", "2", "--mem", "384",
		"--cmdline", cmdline, "--api", sock, "--console", "none")
	run.Stderr = &stderr
	start := time.Now()
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	// exited is closed when run has exited, with its error in runErr.
	exited := make(chan struct{})
	var runErr error
	go func() { runErr = run.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			run.Process.Kill()
			<-exited
		}
	}()
	klp := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append(args[:1:1], append([]string{"--api", sock}, args[1:]...)...)...).CombinedOutput()
		return string(out), err
	}
	// exec answers once the agent does: until then the API refuses it.
	var out string
	var err error
	for deadline := time.Now().Add(bootTimeout); ; {
		if out, err = klp("exec", "--", "cat", "/proc/cmdline"); err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-exited:
			t.Fatalf("klp-kvm run exited before its agent answered: %v\n%s", runErr, stderr.String())
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("exec -- cat /proc/cmdline: %v\n%s\nrun's stderr:\n%s", err, out, stderr.String())
	}
	t.Logf("first exec answered %v after klp-kvm run started", time.Since(start).Round(time.Millisecond))
	if strings.TrimSpace(out) != cmdline {
		t.Errorf("exec -- cat /proc/cmdline = %q, want %q", out, cmdline)
	}

	out, err = klp("status", "--json")
	var info kvm.Info
	if err != nil || json.Unmarshal([]byte(out), &info) != nil || len(info.VCPUs) != 2 || info.MemMiB != 384 {
		t.Errorf("status --json: %v\n%s", err, out)
	}

	out, err = klp("inspect", "--live", "--json", "--func", "cmdline_proc_show", "--func", "no_such_function_xyz")
	var rep linuxkernel.Report
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("inspect --live --json: %v %v\n%s", err, jerr, out)
	}
	if rep.Release == "" || rep.SymbolSource != linuxkernel.SourceKallsyms || len(rep.Tasks) < 20 {
		t.Errorf("inspect --live: release %q, symbols from %q, %d tasks", rep.Release, rep.SymbolSource, len(rep.Tasks))
	}
	if len(rep.Fentry) != 1 || rep.Fentry[0].Func != "cmdline_proc_show" || rep.Fentry[0].Kind != linuxkernel.FentryNop {
		t.Errorf("inspect --live fentry %+v, want cmdline_proc_show's NOP", rep.Fentry)
	}
	if len(rep.FentryErrors) != 1 || !strings.Contains(rep.FentryErrors[0], "no_such_function_xyz") {
		t.Errorf("inspect --live: an unknown --func must be reported, got %q", rep.FentryErrors)
	}
	if txt, err := klp("inspect", "--live"); err != nil || !strings.Contains(txt, "cmdline_proc_show") || !strings.Contains(txt, rep.Release) {
		t.Errorf("inspect --live (text): %v\n%s", err, txt)
	}

	cliLivepatch(t, klp, cmdline)

	if out, err := klp("stop"); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	select {
	case <-exited:
		if runErr != nil {
			t.Errorf("klp-kvm run after stop: %v\n%s", runErr, stderr.String())
		}
		t.Logf("klp-kvm run exited after stop; its stderr:\n%s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("klp-kvm run did not exit after stop\n%s", stderr.String())
	}
}

// cliLivepatch is the sample story with the CLI, as docs/linux-guests.md
// tells it: the .ko is an ordinary file the user has.
func cliLivepatch(t *testing.T, klp func(...string) (string, error), cmdline string) {
	t.Helper()
	ko := filepath.Join(t.TempDir(), "livepatch-sample.ko")
	if err := os.WriteFile(ko, sampleKO, 0o644); err != nil {
		t.Fatal(err)
	}
	cat := func(want string) {
		t.Helper()
		out, err := klp("exec", "--", "cat", "/proc/cmdline")
		if err != nil || strings.TrimSpace(out) != want {
			t.Errorf("exec -- cat /proc/cmdline = %q (%v), want %q", out, err, want)
		}
	}
	const patched = "this has been live patched"
	var op struct {
		Result struct {
			PauseWindow time.Duration `json:"pause_window_ns"`
		} `json:"result"`
	}
	out, err := klp("patch", "load", ko, "--json")
	if err != nil || json.Unmarshal([]byte(out), &op) != nil {
		t.Fatalf("patch load %s: %v\n%s", ko, err, out)
	}
	if op.Result.PauseWindow <= 0 {
		t.Errorf("patch load --json: no pause window in %s", out)
	}
	t.Logf("patch load: %s", strings.TrimSpace(out))
	cat(patched)
	if out, err := klp("patch", "list"); err != nil || !strings.Contains(out, "livepatch_sample") {
		t.Errorf("patch list: %v\n%s", err, out)
	}
	// Loading it again is refused with a clear error and the exit status 1.
	if out, err := klp("patch", "load", ko); err == nil || !strings.Contains(out, "livepatch_sample") {
		t.Errorf("a second load of the same patch: %v\n%s", err, out)
	}
	if out, err := klp("patch", "disable", "livepatch_sample"); err != nil {
		t.Fatalf("patch disable: %v\n%s", err, out)
	}
	cat(cmdline)
	if out, err := klp("patch", "enable", "livepatch_sample"); err != nil {
		t.Fatalf("patch enable: %v\n%s", err, out)
	}
	cat(patched)
	if out, err := klp("patch", "unload", "livepatch_sample"); err != nil {
		t.Fatalf("patch unload: %v\n%s", err, out)
	}
	cat(cmdline)
	var st struct {
		Patches []json.RawMessage `json:"patches"`
		InUse   *uint64           `json:"patch_area_in_use"`
	}
	out, err = klp("patch", "list", "--json")
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || len(st.Patches) != 0 || st.InUse == nil || *st.InUse != 0 {
		t.Errorf("patch list after unload: want no patch and nothing of the patch area in use: %v\n%s", err, out)
	}
}
