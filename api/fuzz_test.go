package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
)

// FuzzHandlers sends arbitrary requests (method, path, body) through the
// whole API over fake backends (apitest.API: a fake machine and agent, a
// livepatch manager over a fake guest), behind api.Harden. Whatever comes
// in: no panic, a known status, a JSON reply, and for a refusal a short
// error message with an errno. The seed corpus
// (testdata/fuzz/FuzzHandlers) holds the requests of TestHostileRequests
// and well-formed ones.
func FuzzHandlers(f *testing.F) {
	f.Add("GET", "/machine", []byte(nil))
	f.Add("POST", "/guest/exec", []byte(`{"cmd":"cat /proc/cmdline"}`))
	f.Add("POST", "/patches/livepatch_sample/enable", []byte(`{"deadline_ms":100}`))
	var fake *apitest.API
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://klp"+path, bytes.NewReader(body))
		if err != nil || req.URL.Host != "klp" {
			t.Skip("not a request a server would parse")
		}
		if fake == nil {
			fake = apitest.NewAPI(t)
		}
		rec := httptest.NewRecorder()
		fake.Handler.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 404, 405, 409, 413, 503:
		default:
			t.Fatalf("%s %q %q: status %d: %s", method, path, body, rec.Code, rec.Body.Bytes())
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %q %q: %d: reply not JSON: %q", method, path, body, rec.Code, rec.Body.Bytes())
		}
		if rec.Code >= 400 {
			var er api.ErrorReply
			if err := json.Unmarshal(rec.Body.Bytes(), &er); err != nil || er.Error == "" || er.Errno == "" {
				t.Fatalf("%s %q %q: %d: not an error reply: %q", method, path, body, rec.Code, rec.Body.Bytes())
			}
			if len(er.Error) > 600 {
				t.Fatalf("%s %q: %d-byte error message echoes too much: %q", method, path, len(er.Error), er.Error)
			}
		}
		if !fake.Reset() {
			fake = nil // state that outlives an input (a forced patch's image): start afresh
		}
	})
}
