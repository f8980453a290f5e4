package applets

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeProc makes a procfs-like tree: a PID 1 init, a kernel thread, and a
// task whose comm holds ") (" to test stat parsing.
func fakeProc(t *testing.T) string {
	d := t.TempDir()
	add := func(pid int, comm, cmdline string, ppid int) {
		p := filepath.Join(d, fmt.Sprint(pid))
		os.MkdirAll(p, 0o755)
		stat := fmt.Sprintf("%d (%s) S %d %d %d 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 1 0 5 0 0", pid, comm, ppid, pid, pid)
		os.WriteFile(filepath.Join(p, "stat"), []byte(stat), 0o644)
		os.WriteFile(filepath.Join(p, "cmdline"), []byte(cmdline), 0o644)
	}
	add(1, "init", "/init\x00", 0)
	add(2, "kthreadd", "", 0)
	add(77, "we) (ird", "./prog\x00-x\x00", 1)
	os.MkdirAll(filepath.Join(d, "self"), 0o755)
	os.WriteFile(filepath.Join(d, "mounts"), []byte("proc /proc proc rw,nosuid 0 0\ntmpfs /tmp tmpfs rw 0 0\n"), 0o644)
	return d
}

func sh(t *testing.T, proc, script string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	env := &Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out, Dir: t.TempDir(), Proc: proc}
	st := Shell(context.Background(), env, script)
	return out.String(), st
}

func TestApplets(t *testing.T) {
	proc := fakeProc(t)
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("alpha\nBeta\ngamma\nalphabet\n"), 0o644)
	var u unix.Utsname
	unix.Uname(&u)
	rel := unix.ByteSliceToString(u.Release[:])
	for _, tc := range []struct {
		script, out string
		status      int
	}{
		{"echo a b", "a b\n", 0},
		{"/bin/echo -n x; echo y", "xy\n", 0}, // a path to an applet's name runs the applet
		{"cat " + f + " | head -n 2", "alpha\nBeta\n", 0},
		{"head -1 " + f, "alpha\n", 0},
		{"head -c 3 " + f, "alp", 0},
		{"grep alpha " + f, "alpha\nalphabet\n", 0},
		{"grep -i beta " + f, "Beta\n", 0},
		{"grep -v a " + f, "", 1},
		{"grep -c alpha " + f, "2\n", 0},
		{"grep -n gamma " + f, "3:gamma\n", 0},
		{"grep -w alpha " + f, "alpha\n", 0},
		{"grep -E 'ga+m|Be' " + f, "Beta\ngamma\n", 0},
		{"grep -F 'a.p' " + f, "", 1},
		{"grep -q gamma " + f + " && echo yes", "yes\n", 0},
		{"grep -H Beta " + f + " " + f, f + ":Beta\n" + f + ":Beta\n", 0},
		{"grep x /nonexistent", "grep: /nonexistent: no such file or directory\n", 2},
		{"grep '(' " + f, "", 2},
		{"uname -r", rel + "\n", 0},
		{"uname", "Linux\n", 0},
		{"uname -q", "uname: invalid option -- 'q'\n", 2},
		{"ps", "    PID TTY          TIME CMD\n      1 ?        00:00:03 init\n      2 ?        00:00:03 kthreadd\n     77 ?        00:00:03 we) (ird\n", 0},
		{"ps -e -o pid,ppid,args", "    PID    PPID CMD\n      1       0 /init\n      2       0 [kthreadd]\n     77       1 ./prog -x\n", 0},
		{"ps -o bogus", "", 2},
		{"mount", "proc on /proc type proc (rw,nosuid)\ntmpfs on /tmp type tmpfs (rw)\n", 0},
		{"kill -l | grep -c KILL", "1\n", 0},
		{"kill -0 " + fmt.Sprint(os.Getpid()), "", 0},
		{"kill -s BOGUS 1", "kill: unknown signal \"BOGUS\"\n", 2},
		{"tail -n 2 " + f, "gamma\nalphabet\n", 0},
		{"cat " + f + " | tail -1", "alphabet\n", 0},
		{"wc -l " + f, "4 " + f + "\n", 0},
		{"echo one two | wc", "      1       2       8\n", 0},
		{"true && false || echo or", "or\n", 0},
		{"sleep 0.01 && echo slept", "slept\n", 0},
		{"sleep x", "sleep: invalid time interval \"x\"\n", 2},
		{"mkdir -p " + dir + "/a/b && touch " + dir + "/a/b/c && ls " + dir + "/a/b", "c\n", 0},
		{"cp " + f + " " + dir + "/g && cat " + dir + "/g | grep -c a", "4\n", 0},
		{"rm " + dir + "/g && test -e " + dir + "/g || echo gone", "gone\n", 0},
		{"sh -c 'echo $1-$2' name one two", "one-two\n", 0},
		{"no-such-command-klp", "", 127},
	} {
		out, st := sh(t, proc, tc.script)
		if st != tc.status || (tc.out != "" || tc.status == 0) && out != tc.out {
			t.Errorf("%s:\n got status %d %q\nwant status %d %q", tc.script, st, out, tc.status, tc.out)
		}
	}
}

func TestPsMatchesProc(t *testing.T) {
	out, st := sh(t, "", "ps -e -o pid,comm")
	if st != 0 {
		t.Fatalf("ps: %d %s", st, out)
	}
	procs, err := ReadProcs("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, fmt.Sprintf("%7d ", os.Getpid())) {
		t.Errorf("ps -e lacks this process %d", os.Getpid())
	}
	if n := strings.Count(out, "\n") - 1; n < len(procs)/2 || n > len(procs)*2 {
		t.Errorf("ps listed %d processes, /proc has about %d", n, len(procs))
	}
}

func TestShellContextEndsSleep(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	st := Shell(ctx, &Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out}, "sleep 20; echo no")
	if st == 0 || strings.Contains(out.String(), "no") || time.Since(start) > 10*time.Second {
		t.Errorf("status %d output %q after %v", st, out.String(), time.Since(start))
	}
}

func TestLookupAndNames(t *testing.T) {
	for _, n := range []string{"sh", "cat", "ls", "ps", "dmesg", "echo", "uname", "sleep", "grep", "head", "kill",
		"mount", "poweroff", "reboot", "insmod", "rmmod", "lsmod"} {
		if _, ok := Lookup("/bin/" + n); !ok {
			t.Errorf("no applet %s", n)
		}
	}
	if _, ok := Lookup("bogus"); ok {
		t.Error("bogus applet found")
	}
}

func TestModuleApplets(t *testing.T) {
	proc := fakeProc(t)
	os.WriteFile(filepath.Join(proc, "modules"), []byte(
		"livepatch_sample 16384 1 - Live 0xffffffffc0a1c000 (K)\n"+
			"klp_busy 16384 0 dep_a,dep_b, Live 0xffffffffc0a00000 (OE)\n"), 0o644)
	out, st := sh(t, proc, "lsmod")
	want := "Module                  Size  Used by\n" +
		"livepatch_sample       16384  1 \n" +
		"klp_busy               16384  0 dep_a,dep_b\n"
	if st != 0 || out != want {
		t.Errorf("lsmod: status %d\n%q\nwant\n%q", st, out, want)
	}
	// Errors name the module and the errno; nothing is loaded from a
	// file that is not an ELF module (finit_module as an unprivileged or
	// privileged user both refuse it).
	junk := filepath.Join(t.TempDir(), "junk.ko")
	os.WriteFile(junk, []byte("not a module"), 0o644)
	for _, tc := range []struct{ script, want string }{
		{"insmod", "usage"},
		{"insmod /nonexistent.ko", "no such file"},
		{"insmod " + junk, "could not insert module " + junk},
		{"rmmod", "usage"},
		{"rmmod -f", "usage"},
		{"rmmod /x/klp_kvm_no_such_module.ko", "could not remove module klp_kvm_no_such_module"},
	} {
		out, st := sh(t, proc, tc.script)
		if st == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%s: status %d, output %q, want it to hold %q", tc.script, st, out, tc.want)
		}
	}
}
