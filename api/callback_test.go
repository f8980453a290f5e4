package api_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/livepatch"
	"klp-kvm/livepatch/fakeguest"
)

// TestSwitchedButCallbackFailed: a load whose switch happened but whose
// post_patch could not run answers 200 with the result and the callback's
// failure, and the state is the one reached (enabled) — issue 12's
// "every callback error reported; the state reported is the state reached".
func TestSwitchedButCallbackFailed(t *testing.T) {
	g, err := fakeguest.New(1)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	cb := func(ctx context.Context, addr, arg uint64) (int64, error) {
		calls++
		if calls == 2 { // pre_patch runs, post_patch fails
			return 0, errors.New("guest did not answer")
		}
		return 0, nil
	}
	lm, err := livepatch.New(livepatch.Config{Guest: g, Kernel: g.Kernel(), PatchArea: layout.PatchAreaVirt,
		PatchAreaSize: fakeguest.PatchSize, Callbacks: cb, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.LivepatchRoutes(mux, lm, nil)
	sock := apitest.ServeUnix(t, mux)
	obj, err := guestkernel.Patch("livepatch-callbacks")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := api.NewClient(sock).AddPatch(context.Background(), api.PatchRequest{Object: obj, Name: "livepatch-callbacks.o"})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if rep.Result == nil || rep.Result.Funcs == 0 || !strings.Contains(rep.CallbackError, "post_patch") || !strings.Contains(rep.CallbackError, "EREMOTEIO") {
		t.Fatalf("reply %+v", rep)
	}
	st := lm.Status()
	if len(st.Patches) != 1 || !st.Patches[0].Enabled {
		t.Fatalf("state after the load: %+v", st.Patches)
	}
}
