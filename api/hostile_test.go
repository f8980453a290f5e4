package api_test

import (
	"klp-kvm/api"
	"klp-kvm/api/apitest"

	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"klp-kvm/guestkernel"
)

// serveFake sends one request through the whole fake API and returns the
// status, the decoded error reply and the raw body.
func serveFake(t testing.TB, h http.Handler, method, path string, body []byte) (int, api.ErrorReply, []byte) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	var req *http.Request
	if rd != nil {
		req = httptest.NewRequest(method, "http://klp"+path, rd)
	} else {
		req = httptest.NewRequest(method, "http://klp"+path, nil)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var er api.ErrorReply
	_ = json.Unmarshal(rec.Body.Bytes(), &er)
	return rec.Code, er, rec.Body.Bytes()
}

// hostileCase is a hostile or malformed request and how it is refused.
type hostileCase struct {
	name         string
	method, path string
	body         string
	status       int
	errno        string
	msg          string // the message contains it
}

// hostileRequests are the requests TestHostileRequests sends, and seeds of
// FuzzHandlers.
func hostileRequests(t testing.TB) []hostileCase {
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(obj)
	long := strings.Repeat("n", 5000)
	return []hostileCase{
		// Strict JSON.
		{"NUL in cmd", "POST", "/guest/exec", `{"cmd":"ls\u0000; rm -rf /"}`, 400, "EINVAL", `field "cmd": a NUL byte`},
		{"NUL in path", "POST", "/guest/file/read", `{"path":"/sys\u0000x"}`, 400, "EINVAL", `field "path": a NUL byte`},
		{"NUL in name", "POST", "/patches", `{"object":"` + b64 + `","name":"a\u0000.o"}`, 400, "EINVAL", `field "name": a NUL byte`},
		{"null cmd", "POST", "/guest/exec", `{"cmd":null}`, 400, "EINVAL", `field "cmd": null is not a value`},
		{"null force", "POST", "/patches/p/enable", `{"force":null}`, 400, "EINVAL", `field "force": null`},
		{"null object", "POST", "/patches", `{"object":null}`, 400, "EINVAL", `field "object": null`},
		{"null body", "POST", "/guest/exec", `null`, 400, "EINVAL", "want a JSON object, not null"},
		{"null body, optional", "POST", "/patches/p/disable", ` null `, 400, "EINVAL", "want a JSON object, not null"},
		{"array body", "POST", "/guest/exec", `["ls"]`, 400, "EINVAL", "not an array"},
		{"string body", "POST", "/guest/exec", `"ls"`, 400, "EINVAL", "not a string"},
		{"trailing object", "POST", "/guest/exec", `{"cmd":"ls"}{"cmd":"reboot"}`, 400, "EINVAL", "trailing data"},
		{"trailing garbage", "POST", "/patches/p/enable", `{"force":true} x`, 400, "EINVAL", "trailing data"},
		{"unknown field", "POST", "/guest/exec", `{"cmd":"ls","sudo":true}`, 400, "EINVAL", `unknown field "sudo"`},
		{"miscased field", "POST", "/guest/exec", `{"CMD":"ls"}`, 400, "EINVAL", `unknown field "CMD"`},
		{"duplicate field", "POST", "/guest/exec", `{"cmd":"ls","cmd":"reboot"}`, 400, "EINVAL", `field "cmd" given twice`},
		{"wrong type", "POST", "/guest/exec", `{"cmd":1}`, 400, "EINVAL", `field "cmd": want a string, not number`},
		{"wrong type bool", "POST", "/patches/p/enable", `{"force":"yes"}`, 400, "EINVAL", `field "force": want a boolean, not string`},
		{"float deadline", "POST", "/patches/p/enable", `{"deadline_ms":1.5}`, 400, "EINVAL", `field "deadline_ms": want an integer`},
		{"huge deadline", "POST", "/patches/p/enable", `{"deadline_ms":1e30}`, 400, "EINVAL", `field "deadline_ms"`},
		{"negative deadline", "POST", "/patches/p/enable", `{"deadline_ms":-1}`, 400, "EINVAL", `field "deadline_ms": -1 is not in`},
		{"overflowing deadline", "POST", "/patches/p/enable", `{"deadline_ms":9223372036854775807}`, 400, "EINVAL", `field "deadline_ms"`},
		{"empty body", "POST", "/guest/exec", ``, 400, "EINVAL", "empty: want a JSON object"},
		{"missing required", "POST", "/guest/exec", `{}`, 400, "EINVAL", `field "cmd" is required`},
		{"missing object", "POST", "/patches", `{"op":"load"}`, 400, "EINVAL", `field "object" is required`},
		{"bad UTF-8", "POST", "/guest/exec", "{\"cmd\":\"\xff\xfe\"}", 400, "EINVAL", "not valid UTF-8"},
		{"truncated", "POST", "/guest/exec", `{"cmd":"ls"`, 400, "EINVAL", "malformed JSON"},
		{"trailing comma", "POST", "/guest/exec", `{"cmd":"ls",}`, 400, "EINVAL", "malformed JSON"},
		{"bare key", "POST", "/guest/exec", `{cmd:"ls"}`, 400, "EINVAL", "malformed JSON"},
		{"body on GET", "GET", "/machine", `{}`, 400, "EINVAL", "this route takes none"},
		{"body on pause", "POST", "/machine/pause", `{"force":true}`, 400, "EINVAL", "this route takes none"},
		{"data on read", "POST", "/guest/file/read", `{"path":"/x","data":"y"}`, 400, "EINVAL", `field "data"`},
		// Size caps, before the body is read.
		{"exec too large", "POST", "/guest/exec", `{"cmd":"` + strings.Repeat("x", api.MaxGuestBody) + `"}`, 413, "EMSGSIZE", "larger than 16384 bytes"},
		{"control too large", "POST", "/patches/p/enable", `{"force":true}` + strings.Repeat(" ", api.MaxControlBody), 413, "EMSGSIZE", "larger than 1024 bytes"},
		{"GET too large", "GET", "/patches", strings.Repeat(" ", api.MaxControlBody+1), 413, "EMSGSIZE", ""},
		// Patches arrive as bytes; the server opens no file for a client.
		{"path field", "POST", "/patches", `{"path":"/etc/shadow"}`, 400, "EINVAL", `unknown field "path"`},
		{"path field, missing file", "POST", "/patches", `{"path":"/nonexistent"}`, 400, "EINVAL", `unknown field "path"`},
		{"object not base64", "POST", "/patches", `{"object":"@@@@"}`, 400, "EINVAL", `field "object": illegal base64`},
		{"object empty", "POST", "/patches", `{"object":""}`, 400, "EINVAL", `field "object": empty`},
		{"object not ELF", "POST", "/patches", `{"object":"anVuaw==","name":"junk.o"}`, 400, "EINVAL", "register junk.o:"},
		{"bad op", "POST", "/patches", `{"op":"explode","object":"` + b64 + `"}`, 400, "EINVAL", `field "op": "explode"`},
		{"name is a path", "POST", "/patches", `{"object":"anVuaw==","name":"../../x.o"}`, 400, "EINVAL", "a file name, not a path"},
		{"name too long", "POST", "/patches", `{"object":"anVuaw==","name":"` + long + `"}`, 400, "EINVAL", `field "name": 5000 bytes`},
		// Names and operations that are no patch's.
		{"long name", "POST", "/patches/" + long + "/enable", ``, 404, "ENOENT", "enable " + long[:api.MaxEcho] + "...: "},
		{"long op", "POST", "/patches/p/" + long, ``, 404, "ENOENT", `no operation "` + long[:api.MaxEcho] + `..."`},
		{"unload unknown", "POST", "/patches/nosuch/unload", ``, 404, "ENOENT", "unload nosuch: "},
		{"escaped name", "POST", "/patches/a%2Fb/disable", ``, 404, "ENOENT", "disable a/b: "},
		// api.Routes and methods.
		{"no route", "GET", "/etc/passwd", ``, 404, "ENOENT", "no such route: GET /etc/passwd"},
		{"unclean path", "GET", "/patches/../machine", ``, 404, "ENOENT", "not a canonical path"},
		{"double slash", "POST", "//", ``, 404, "ENOENT", "not a canonical path"},
		{"long route", "GET", "/" + long, ``, 404, "ENOENT", "..."},
		{"wrong method", "GET", "/patches/p/enable", ``, 405, "EINVAL", "use POST"},
		{"DELETE", "DELETE", "/machine", ``, 405, "EINVAL", "use GET"},
	}
}

// Hostile or malformed requests, each refused with a JSON error naming
// what was wrong (the field, when there is one) and the right status.
func TestHostileRequests(t *testing.T) {
	cases := hostileRequests(t)
	f := apitest.NewAPI(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, er, raw := serveFake(t, f.Handler, c.method, c.path, []byte(c.body))
			if status != c.status || er.Errno != c.errno || !strings.Contains(er.Error, c.msg) {
				t.Errorf("%s %s: %d %s %q, want %d %s containing %q", c.method, api.Clip(c.path), status, er.Errno, er.Error, c.status, c.errno, c.msg)
			}
			if len(er.Error) > 300 {
				t.Errorf("message of %d bytes echoes too much: %q", len(er.Error), api.Clip(er.Error))
			}
			if !json.Valid(raw) {
				t.Errorf("reply is not JSON: %q", raw)
			}
		})
	}
	if len(f.Agent.Cmds()) != 0 {
		t.Errorf("refused requests reached the agent: %q", f.Agent.Cmds())
	}
	// No existence oracle: a path that exists and one that does not get
	// the same answer, byte for byte.
	_, _, a := serveFake(t, f.Handler, "POST", "/patches", []byte(`{"path":"/etc/passwd"}`))
	_, _, b := serveFake(t, f.Handler, "POST", "/patches", []byte(`{"path":"/nonexistent/x"}`))
	if !bytes.Equal(bytes.ReplaceAll(a, []byte("/etc/passwd"), nil), bytes.ReplaceAll(b, []byte("/nonexistent/x"), nil)) {
		t.Errorf("replies differ:\n%s\n%s", a, b)
	}
	t.Logf("%d hostile requests refused", len(cases))
}

// The requests the hostile ones are variations of are served: the table
// above refuses what it should, not everything.
func TestWellFormedRequests(t *testing.T) {
	f := apitest.NewAPI(t)
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(api.PatchRequest{Op: "register", Object: obj, Name: "livepatch-sample.o"})
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/machine", ""},
		{"POST", "/machine/pause", ""},
		{"POST", "/machine/resume", " \n"},
		{"GET", "/guest/info", ""},
		{"POST", "/guest/exec", ` { "cmd" : "cat /proc/cmdline" } ` + "\n"},
		{"POST", "/guest/file/write", `{"path":"/sys/kernel/livepatch/x/enabled","data":"0"}`},
		{"POST", "/guest/file/read", `{"path":"/sys/kernel/livepatch/x/enabled"}`},
		{"POST", "/patches", string(body)},
		{"POST", "/patches/livepatch_sample/enable", `{"deadline_ms":100,"force":false,"conservative":true}`},
		{"GET", "/patches", ""},
		{"GET", "/status", ""},
		{"POST", "/patches/livepatch_sample/unload", ""},
	} {
		status, er, raw := serveFake(t, f.Handler, c.method, c.path, []byte(c.body))
		if status != 200 {
			t.Errorf("%s %s %s: %d %+v", c.method, c.path, c.body, status, er)
		}
		if !json.Valid(raw) {
			t.Errorf("%s %s: reply is not JSON: %q", c.method, c.path, raw)
		}
	}
	if len(f.Agent.Cmds()) != 1 || f.Agent.Cmds()[0] != "cat /proc/cmdline" {
		t.Errorf("agent saw %q", f.Agent.Cmds())
	}
}

// Lists are [] in JSON, never null, and every key is snake_case.
func TestJSONShapes(t *testing.T) {
	f := apitest.NewAPI(t)
	_, _, raw := serveFake(t, f.Handler, "GET", "/patches", nil)
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"patches", "redirected_sites"} {
		if string(m[k]) != "[]" {
			t.Errorf("%s: %s, want []", k, m[k])
		}
	}
	obj, _ := guestkernel.Patch("livepatch-sample")
	body, _ := json.Marshal(api.PatchRequest{Object: obj})
	if status, er, _ := serveFake(t, f.Handler, "POST", "/patches", body); status != 200 {
		t.Fatalf("load: %d %+v", status, er)
	}
	for _, path := range []string{"/patches", "/status", "/machine"} {
		_, _, raw = serveFake(t, f.Handler, "GET", path, nil)
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		walkKeys(v, func(k string) {
			if k != strings.ToLower(k) || strings.ContainsAny(k, " -") {
				t.Errorf("%s: key %q is not snake_case", path, k)
			}
		})
		if bytes.Contains(raw, []byte("null")) {
			t.Errorf("%s: null in %s", path, raw)
		}
	}
}

func walkKeys(v any, f func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			f(k)
			walkKeys(e, f)
		}
	case []any:
		for _, e := range v {
			walkKeys(e, f)
		}
	}
}
