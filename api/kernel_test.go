package api_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/linuxkernel"
)

type fakeKernel struct {
	funcs [][]string
	err   error
}

func (f *fakeKernel) InspectKernel(ctx context.Context, funcs []string) (*linuxkernel.Report, error) {
	f.funcs = append(f.funcs, funcs)
	if f.err != nil {
		return nil, f.err
	}
	r := &linuxkernel.Report{Release: "6.1.0-57-amd64", KASLROffset: 0x1c000000, SymbolSource: linuxkernel.SourceKallsyms, Symbols: 94266, BTFTypes: 100811,
		Tasks: []linuxkernel.Task{{Pid: 1, Tgid: 1, Comm: "init", State: "S", RunningOn: -1, StackBase: 0xffffc90000010000, StackTop: 0xffffc90000014000}}}
	for _, fn := range funcs {
		r.Fentry = append(r.Fentry, linuxkernel.FentrySite{Func: fn, Addr: 0xffffffff9d4a1230, Site: 0xffffffff9d4a1230, Kind: linuxkernel.FentryNop, Bytes: "0f1f440000"})
	}
	return r, nil
}

func TestKernelRoute(t *testing.T) {
	fk := &fakeKernel{}
	mux := http.NewServeMux()
	api.KernelRoutes(mux, fk)
	c := api.NewClient(apitest.ServeUnix(t, mux))
	ctx := context.Background()
	rep, err := c.Kernel(ctx, []string{"cmdline_proc_show", "do_sys_open.isra.0"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Release != "6.1.0-57-amd64" || rep.KASLROffset != 0x1c000000 || len(rep.Tasks) != 1 || rep.Tasks[0].Comm != "init" ||
		len(rep.Fentry) != 2 || rep.Fentry[1].Func != "do_sys_open.isra.0" || rep.Fentry[0].Kind != linuxkernel.FentryNop {
		t.Errorf("report %+v", rep)
	}
	// Hostile requests are refused before the inspector runs.
	calls := len(fk.funcs)
	for name, funcs := range map[string][]string{
		"empty name": {""},
		"slash":      {"a/b"},
		"space":      {"a b"},
		"too long":   {strings.Repeat("x", 513)},
		"too many":   strings.Fields(strings.Repeat("f ", 17)),
	} {
		_, err := c.Kernel(ctx, funcs)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Errno != syscall.EINVAL {
			t.Errorf("%s: %v, want EINVAL", name, err)
		}
	}
	if len(fk.funcs) != calls {
		t.Errorf("inspector called for refused requests: %v", fk.funcs[calls:])
	}
	// The inspector's failure is EIO with its message.
	fk.err = &linuxkernel.Error{Op: "vmcoreinfo", Kind: linuxkernel.ErrNotFound, Detail: "no page"}
	_, err = c.Kernel(ctx, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Errno != syscall.EIO || !strings.Contains(ae.Detail, "vmcoreinfo") {
		t.Errorf("inspector error: %v", err)
	}
}

func TestKernelRouteNoLinuxGuest(t *testing.T) {
	mux := http.NewServeMux()
	api.KernelRoutes(mux, nil)
	c := api.NewClient(apitest.ServeUnix(t, mux))
	_, err := c.Kernel(context.Background(), nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Errno != syscall.ENOENT {
		t.Errorf("%v, want ENOENT", err)
	}
}
