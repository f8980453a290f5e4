package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"klp-kvm/livepatch"
)

// FuzzHandlers sends arbitrary requests (method, path, body) through the
// whole API over fake backends (fakeMachine, fakeAgent, a livepatch
// manager over a fake guest), behind Harden. Whatever comes in: no panic,
// a known status, a JSON reply, and for a refusal an error message (short)
// with an errno. The seed corpus (testdata/fuzz/FuzzHandlers) holds the
// hostile requests of TestHostileRequests and the well-formed ones.
func FuzzHandlers(f *testing.F) {
	f.Add("GET", "/machine", []byte(nil))
	f.Add("POST", "/guest/exec", []byte(`{"cmd":"cat /proc/cmdline"}`))
	f.Add("POST", "/patches/livepatch_sample/enable", []byte(`{"deadline_ms":100}`))
	var api *fakeAPI
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://klp"+path, bytes.NewReader(body))
		if err != nil || req.URL.Host != "klp" {
			t.Skip("not a request a server would parse")
		}
		if api == nil {
			api = newFakeAPI(t)
		}
		rec := httptest.NewRecorder()
		api.h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 404, 405, 409, 413, 503:
		default:
			t.Fatalf("%s %q %q: status %d: %s", method, path, body, rec.Code, rec.Body.Bytes())
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %q %q: %d: reply not JSON: %q", method, path, body, rec.Code, rec.Body.Bytes())
		}
		if rec.Code >= 400 {
			var er ErrorReply
			if err := json.Unmarshal(rec.Body.Bytes(), &er); err != nil || er.Error == "" || er.Errno == "" {
				t.Fatalf("%s %q %q: %d: not an error reply: %q", method, path, body, rec.Code, rec.Body.Bytes())
			}
			if len(er.Error) > 600 {
				t.Fatalf("%s %q: %d-byte error message echoes too much: %q", method, path, len(er.Error), er.Error)
			}
		}
		if !resetFakeAPI(api) {
			api = nil // state that outlives an input (a forced patch's image): start afresh
		}
	})
}

// resetFakeAPI undoes what a request did to the fake API: patches
// disabled and unregistered, the machine resumed, the agent's log cleared.
// It reports false if something stays (a forced patch's retired image).
func resetFakeAPI(f *fakeAPI) bool {
	lm := f.lm
	st := lm.Status()
	for i := len(st.Patches) - 1; i >= 0; i-- {
		p := st.Patches[i]
		if p.Enabled {
			if _, err := lm.Disable(p.Name, livepatch.Options{}); err != nil {
				return false
			}
		}
		if err := lm.Unregister(p.Name); err != nil {
			return false
		}
	}
	f.m.mu.Lock()
	f.m.depth, f.m.stopped = 0, false
	f.m.mu.Unlock()
	f.agent.mu.Lock()
	f.agent.cmds, f.agent.files = nil, nil
	f.agent.mu.Unlock()
	return lm.Status().Retired == 0
}
