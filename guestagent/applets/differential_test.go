package applets

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLikeCoreutils runs the same command lines with the host's real
// tools (dash/bash + coreutils/procps/grep) and with the applets, and
// wants the same output and status: "behaves like its Linux counterpart"
// checked, not assumed.
func TestLikeCoreutils(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no host shell")
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("alpha beta\nBeta\n\ngamma  delta\talphabet\nlast line no newline"), 0o644)
	g := filepath.Join(dir, "g")
	os.WriteFile(g, []byte("one\ntwo\n"), 0o644)
	for _, cmd := range []string{
		"cat f g", "cat f | head -n 3", "head -2 f", "head -c 7 f", "head -n 1 f g", "head -n 100 f",
		"tail -n 2 f", "tail -3 g", "tail -n 0 f", "cat g | tail -n 1",
		"wc f", "wc -l f g", "wc -w < f", "wc -c f", "wc < f", "cat f | wc -l", "wc -lw f",
		"grep alpha f", "grep -i BETA f", "grep -v a f", "grep -c a f g", "grep -n '' g", "grep -w alpha f",
		"grep -E 'gam+a|^B' f", "grep -F 'a.p' f", "grep -l one f g", "grep -h one f g", "grep -x one g; echo $?",
		"grep nothing f; echo $?", "grep -q two g; echo $?", "grep -e one -e two g", "grep -s x missing; echo $?",
		"echo a   b", "echo -n x", "printf 'a\\nb\\n' | grep -c .",
		"uname -s", "uname -r", "uname -m", "uname -srm",
		"ls", "ls f g", "ls nothing >/dev/null 2>&1; echo $?", "ls f nothing 2>/dev/null; echo $?", "mkdir -p x/y && ls x", "cp g h && cat h && rm h && ls", "touch t && ls t",
		"sleep 0.01; echo $?", "true; echo $?", "false; echo $?",
	} {
		host := exec.Command("sh", "-c", cmd)
		host.Dir = dir
		host.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
		want, err := host.CombinedOutput()
		wantSt := 0
		if ee, ok := err.(*exec.ExitError); ok {
			wantSt = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("host %q: %v", cmd, err)
		}
		// a second, scratch copy for the applets: the commands change the directory
		cleanup := func() {
			c := exec.Command("sh", "-c", "rm -rf x t h")
			c.Dir = dir
			c.Run()
		}
		cleanup()
		var out bytes.Buffer
		st := Shell(context.Background(), &Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out, Dir: dir}, cmd)
		cleanup()
		if out.String() != string(want) || st != wantSt {
			t.Errorf("%s:\n applets %d %q\n host    %d %q", cmd, st, out.String(), wantSt, want)
		}
	}
}

// TestPsLikeProcps compares ps -e with the host's procps: the same PIDs
// and task names for the processes both saw. Processes come and go and
// rename themselves between snapshots (a kworker's name carries the
// workqueue it is running, "kworker/0:1-events"), so procps is asked
// before and after ours, only names it saw unchanged are compared, and a
// kworker is compared up to its workqueue suffix.
func TestPsLikeProcps(t *testing.T) {
	if _, err := exec.LookPath("ps"); err != nil {
		t.Skip("no procps ps")
	}
	procps := func() string {
		b, err := exec.Command("ps", "-e", "-o", "pid=,comm=").Output()
		if err != nil {
			t.Skip("host ps:", err)
		}
		return string(b)
	}
	before := procps()
	var out bytes.Buffer
	if st := ps(context.Background(), &Env{Stdout: &out, Stderr: &out}, []string{"ps", "-e", "-o", "pid,comm"}); st != 0 {
		t.Fatal(out.String())
	}
	after := procps()
	parse := func(s string) map[int]string {
		m := map[int]string{}
		for _, l := range strings.Split(s, "\n") {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			if pid, err := strconv.Atoi(f[0]); err == nil {
				m[pid] = strings.Join(f[1:], " ")
			}
		}
		return m
	}
	stable := func(name string) string {
		if strings.HasPrefix(name, "kworker/") {
			name, _, _ = strings.Cut(name, "-")
		}
		return name
	}
	h, h2, a := parse(before), parse(after), parse(out.String())
	both := 0
	for pid, comm := range h {
		c, ok := a[pid]
		if !ok || h2[pid] != comm {
			continue
		}
		both++
		if stable(c) != stable(comm) {
			t.Errorf("pid %d: ps says %q, procps %q", pid, c, comm)
		}
	}
	if both < len(h)*9/10 {
		t.Errorf("only %d of procps' %d processes listed", both, len(h))
	}
	if !strings.HasPrefix(out.String(), "    PID CMD\n") {
		t.Errorf("header %q", strings.SplitN(out.String(), "\n", 2)[0])
	}
}
