package api_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/guestkernel"
)

// Every route of the table is served, under exactly that pattern, by the
// servers' registration functions: the client cannot ask for a route the
// server does not have.
func TestRoutesServed(t *testing.T) {
	lm, _ := apitest.NewManager(t, 1)
	mux := http.NewServeMux()
	api.MachineRoutes(mux, nil)
	api.GuestRoutes(mux, nil)
	api.LivepatchRoutes(mux, lm, nil)
	api.KernelRoutes(mux, nil)
	for _, r := range api.Routes {
		var args []string
		if strings.Contains(r.Pattern, "{name}") {
			args = []string{"livepatch_sample"}
		}
		p, err := r.Path(args...)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		_, pattern := mux.Handler(httptest.NewRequest(r.Method, p, nil))
		if pattern != r.String() {
			t.Errorf("%s %s: served by %q, want %q", r.Method, p, pattern, r.String())
		}
	}
}

// A patch name is one path segment whatever it holds: '/' and '%' are
// escaped by the client and come back unchanged from the server's
// PathValue; a name that cannot be a segment is refused before sending.
func TestClientNameEscaping(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc(api.RoutePatchEnable.String(), func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, api.OpReply{Op: "enable", Patch: r.PathValue("name")})
	})
	c := api.NewClient(apitest.ServeUnix(t, mux))
	ctx := context.Background()
	for _, name := range []string{"livepatch_sample", "a/b", "/lead", "trail/", "50%", "x%2Fy", "%", "a b?c#d", "../x", "a/../b"} {
		rep, err := c.Enable(ctx, name, api.OpRequest{})
		if err != nil || rep.Patch != name {
			t.Errorf("Enable(%q): server saw %q, %v", name, rep.Patch, err)
		}
	}
	for _, name := range []string{"", ".", ".."} {
		_, err := c.Enable(ctx, name, api.OpRequest{})
		var ae *api.Error
		if !errors.As(err, &ae) || !ae.Refused() || ae.Errno != syscall.EINVAL {
			t.Errorf("Enable(%q): %v, want a refusal with EINVAL", name, err)
		}
	}
	if _, err := api.RoutePatchEnable.Path(); err == nil {
		t.Error("Path without the name: no error")
	}
	if _, err := api.RouteMachine.Path("x"); err == nil {
		t.Error("Path with an extra argument: no error")
	}
}

// The typed client through the whole livepatch cycle, and an odd name
// refused by the livepatch core itself (ENOENT naming it), not lost on
// the way.
func TestClientLivepatch(t *testing.T) {
	lm, _ := apitest.NewManager(t, 1)
	mux := http.NewServeMux()
	api.LivepatchRoutes(mux, lm, nil)
	c := api.NewClient(apitest.ServeUnix(t, mux))
	ctx := context.Background()
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := c.AddPatch(ctx, api.PatchRequest{Op: "register", Object: obj}); err != nil || rep.Patch != "livepatch_sample" {
		t.Fatalf("register: %+v %v", rep, err)
	}
	if rep, err := c.Enable(ctx, "livepatch_sample", api.OpRequest{DeadlineMS: 100}); err != nil || rep.Result == nil || rep.Result.Funcs != 1 {
		t.Fatalf("enable: %+v %v", rep, err)
	}
	if st, err := c.Patches(ctx); err != nil || len(st.Patches) != 1 || !st.Patches[0].Enabled {
		t.Fatalf("patches: %+v %v", st, err)
	}
	for _, name := range []string{"a/b", "50%"} {
		_, err := c.Disable(ctx, name, api.OpRequest{})
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Errno != syscall.ENOENT || !strings.Contains(ae.Detail, "disable "+name+":") {
			t.Errorf("Disable(%q): %v, want ENOENT naming it", name, err)
		}
	}
	if _, err := c.Unregister(ctx, "livepatch_sample"); err == nil {
		t.Fatal("unregister of an enabled patch succeeded")
	}
	if _, err := c.Disable(ctx, "livepatch_sample", api.OpRequest{}); err != nil {
		t.Fatal(err)
	}
	if rep, err := c.Unregister(ctx, "livepatch_sample"); err != nil || rep.Op != "unregister" {
		t.Fatalf("unregister: %+v %v", rep, err)
	}
	if st, err := c.Status(ctx); err != nil || len(st.Livepatch.Patches) != 0 {
		t.Fatalf("status: %+v %v", st, err)
	}
}
