package api_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/guestkernel"
	"klp-kvm/livepatch"
)

// afterPatcher is a Patcher whose AfterReply waits until the test's
// client has read the reply: were the reply held back until AfterReply
// returned, the wait would time out.
type afterPatcher struct {
	*livepatch.Manager
	mu      sync.Mutex
	read    chan struct{} // closed by the test once it has the reply
	calls   int
	timeout int
}

func (p *afterPatcher) AfterReply() {
	p.mu.Lock()
	read := p.read
	p.mu.Unlock()
	ok := true
	select {
	case <-read:
	case <-time.After(5 * time.Second):
		ok = false
	}
	p.mu.Lock()
	p.calls++
	if !ok {
		p.timeout++
	}
	p.mu.Unlock()
}

// TestAfterReply: every route that may change the state (POST /patches,
// enable, disable, unregister; a refused one too) calls the Patcher's
// AfterReply once, after its reply reached the client; a read-only
// route does not call it.
func TestAfterReply(t *testing.T) {
	lm, _ := apitest.NewManager(t, 1)
	p := &afterPatcher{Manager: lm}
	mux := http.NewServeMux()
	api.LivepatchRoutes(mux, p, nil)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		t.Fatal(err)
	}
	calls := func() (int, int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.calls, p.timeout
	}
	for i, step := range []struct {
		path string
		body any
		code int
	}{
		{"/patches", api.PatchRequest{Op: "register", Object: obj}, 200},
		{"/patches/livepatch_sample/enable", nil, 200},
		{"/patches/nosuch/enable", nil, 404},
		{"/patches/livepatch_sample/disable", nil, 200},
		{"/patches/livepatch_sample/unregister", nil, 200},
	} {
		p.mu.Lock()
		p.read = make(chan struct{})
		read := p.read
		p.mu.Unlock()
		code, er, _ := post(t, srv.URL+step.path, step.body) // returns once the reply is read
		close(read)
		if code != step.code {
			t.Fatalf("POST %s: %d %+v, want %d", step.path, code, er, step.code)
		}
		var n int
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if n, _ = calls(); n == i+1 {
				break
			}
		}
		if n, late := calls(); n != i+1 || late != 0 {
			t.Fatalf("after POST %s: %d AfterReply calls (want %d), %d before the reply was read", step.path, n, i+1, late)
		}
	}
	resp, err := http.Get(srv.URL + "/patches")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	time.Sleep(20 * time.Millisecond)
	if n, _ := calls(); n != 5 {
		t.Errorf("GET /patches called AfterReply: %d calls", n)
	}
}
