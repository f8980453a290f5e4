// Package apitest serves klp-kvm's control API in tests, without a guest:
// a livepatch.Manager over a fake guest (livepatch/fakeguest), a fake
// machine and guest agent (Machine, Agent, the whole API over them: API),
// and servers on a unix socket as `klp-kvm run` has one. The api package's tests and
// the CLI's use it, as net/http/httptest is used for HTTP.
package apitest

import (
	"net/http"
	"path/filepath"
	"testing"

	"klp-kvm/api"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/livepatch"
	"klp-kvm/livepatch/fakeguest"
)

// NewManager is a livepatch.Manager over a fake guest of cpus vCPUs
// holding the embedded guest kernel, laid out as `klp-kvm run` lays out a
// machine (the patch area at layout.PatchAreaVirt).
func NewManager(tb testing.TB, cpus int) (*livepatch.Manager, *fakeguest.Guest) {
	tb.Helper()
	g, err := fakeguest.New(cpus)
	if err != nil {
		tb.Fatal(err)
	}
	lm, err := livepatch.New(livepatch.Config{Guest: g, Kernel: g.Kernel(), PatchArea: layout.PatchAreaVirt,
		PatchAreaSize: fakeguest.PatchSize})
	if err != nil {
		tb.Fatal(err)
	}
	return lm, g
}

// ServeUnix serves h with api.NewServer on a fresh unix socket made by
// api.Listen (as `klp-kvm run` makes its own) in a temporary directory, and
// returns its path. The server is closed when the test ends.
func ServeUnix(tb testing.TB, h http.Handler) string {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "api.sock")
	l, err := api.Listen(sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := api.NewServer(h)
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	return sock
}

// ServeLivepatch serves the livepatch routes over NewManager(tb, 1) on a
// unix socket (ServeUnix); it returns the socket and the fake guest.
func ServeLivepatch(tb testing.TB) (string, *fakeguest.Guest) {
	tb.Helper()
	lm, g := NewManager(tb, 1)
	mux := http.NewServeMux()
	api.LivepatchRoutes(mux, lm, nil)
	return ServeUnix(tb, mux), g
}
