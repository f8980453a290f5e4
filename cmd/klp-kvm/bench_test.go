package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"klp-kvm/latency"
)

func TestBenchCommand(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	code := dispatch([]string{"bench", "--engine", "emu", "--cpus", "1", "--funcs", "1,10", "--iterations", "3", "--out", dir, "--json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rows []latency.Row
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("--json: %v\n%s", err, out.String())
	}
	if len(rows) != 2 || rows[0].Funcs != 1 || rows[1].Funcs != 10 || rows[0].CPUs != 1 || rows[0].Engine != "emu" {
		t.Fatalf("rows %+v", rows)
	}
	for _, r := range rows {
		if r.Window <= 0 || r.Bare <= 0 || r.Total < r.Window || r.Iterations != 3 {
			t.Errorf("implausible row %+v", r)
		}
	}
	txt, err := os.ReadFile(filepath.Join(dir, "bench.txt"))
	if err != nil || !strings.Contains(string(txt), "window/bare") {
		t.Fatalf("bench.txt: %v\n%s", err, txt)
	}
	if _, err := os.Stat(filepath.Join(dir, "bench.json")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{{"bench", "--cpus", "0"}, {"bench", "--funcs", "2000"}, {"bench", "--iterations", "0"}} {
		if code := dispatch(bad, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
}
