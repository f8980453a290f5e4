package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/linuxkernel"
)

type fakeKernel struct{ funcs []string }

func (f *fakeKernel) InspectKernel(ctx context.Context, funcs []string) (*linuxkernel.Report, error) {
	f.funcs = funcs
	r := &linuxkernel.Report{Release: "6.1.0-57-amd64", KASLROffset: 0x1c000000, KASLRSource: "vmcoreinfo KERNELOFFSET", SymbolSource: linuxkernel.SourceKallsyms, Symbols: 94266, BTFTypes: 100811, ThreadSize: 16 << 10, Threads: 1,
		Tasks: []linuxkernel.Task{{Pid: 1, Tgid: 1, Comm: "init", State: "S", CPU: 1, RunningOn: -1, StackBase: 0xffffc90000010000, StackTop: 0xffffc90000014000}}}
	for _, fn := range funcs {
		site := linuxkernel.FentrySite{Func: fn, Addr: 0xffffffff9d4a1230, Site: 0xffffffff9d4a1230, Kind: linuxkernel.FentryNop, Bytes: "0f1f440000"}
		if fn == "traced" {
			site.Kind, site.Bytes, site.Target, site.TargetSym = linuxkernel.FentryCall, "e8cb3a0000", 0xffffffff9d4a5000, "ftrace_caller"
		}
		r.Fentry = append(r.Fentry, site)
	}
	return r, nil
}

func TestInspectLive(t *testing.T) {
	fk := &fakeKernel{}
	mux := http.NewServeMux()
	api.KernelRoutes(mux, fk)
	sock := apitest.ServeUnix(t, mux)
	var out, errb bytes.Buffer
	if rc := cmdInspect([]string{"--live", "--api", sock}, &out, &errb); rc != 0 {
		t.Fatalf("inspect --live: %d %s", rc, errb.String())
	}
	if !reflect.DeepEqual(fk.funcs, []string{"cmdline_proc_show"}) {
		t.Errorf("default funcs %q", fk.funcs)
	}
	for _, want := range []string{"kernel 6.1.0-57-amd64\n", "KASLR offset 0x1c000000 (vmcoreinfo KERNELOFFSET)\n", "symbols: 94266 from vmcoreinfo+kallsyms", "BTF: 100811 types",
		"tasks: 1, threads: 1 (kernel stacks of 16 KiB)", "      1       1 init             S    1 -       0xffffc90000010000-0xffffc90000014000",
		"fentry cmdline_proc_show at 0xffffffff9d4a1230: nop (0f1f440000)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if rc := cmdInspect([]string{"--live", "--func", "a", "--json", "--func", "traced", "--api", sock}, &out, &errb); rc != 0 {
		t.Fatalf("inspect --live --json: %d %s", rc, errb.String())
	}
	var rep linuxkernel.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || len(rep.Fentry) != 2 || rep.Fentry[1].TargetSym != "ftrace_caller" || rep.Tasks[0].Comm != "init" {
		t.Errorf("json %v: %s", err, out.String())
	}
	for _, args := range [][]string{{"--live", "vmlinux"}, {"--live", "--kernel", "k"}, {"vmlinux", "--func", "x"}} {
		if rc := cmdInspect(args, &out, &errb); rc != 2 {
			t.Errorf("%q: exit %d, want 2", args, rc)
		}
	}
	// No Linux guest: the refusal, exit 1.
	mux = http.NewServeMux()
	api.KernelRoutes(mux, nil)
	errb.Reset()
	if rc := cmdInspect([]string{"--live", "--api", apitest.ServeUnix(t, mux)}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "ENOENT") {
		t.Errorf("no Linux guest: %d %q", rc, errb.String())
	}
}
