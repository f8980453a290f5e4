package guestagent

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
)

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"execute":"guest-ping","id":1}`, `{"execute":"guest-exec","arguments":{"cmd":"ls"},"id":"x"}`,
		`{"execute":1}`, `[]`, `{`, `{"id":{"a":[1,2]}}`, `{"execute":"guest-sync","arguments":null}`, "\x00\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := DecodeRequest(line)
		if err == nil && req.Execute == "" {
			t.Fatal("accepted a request without a command")
		}
		if req.ID != nil && !json.Valid(req.ID) {
			t.Fatalf("id %q is not JSON", req.ID)
		}
		if req.Arguments != nil && req.Arguments[0] != '{' {
			t.Fatalf("arguments %q not an object", req.Arguments)
		}
	})
}

// FuzzServe feeds arbitrary bytes to the whole loop (exec excluded: a
// fuzzer must not run shell commands): every reply line must be JSON.
func FuzzServe(f *testing.F) {
	f.Add([]byte("{\"execute\":\"guest-ping\",\"id\":1}\n{\n[]\n"))
	f.Add([]byte(`{"execute":"guest-file-read","arguments":{"path":"/nonexistent"},"id":"a"}` + "\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if bytes.Contains(in, []byte("exec")) || bytes.Contains(in, []byte("write")) ||
			bytes.Contains(in, []byte(`\u`)) {
			return
		}
		var out bytes.Buffer
		a := New(Options{})
		if err := a.Serve(context.Background(), bytes.NewReader(in), &out); err != nil {
			t.Fatal(err)
		}
		for _, l := range bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n")) {
			if len(l) > 0 && !json.Valid(l) {
				t.Fatalf("reply %q is not JSON", l)
			}
		}
	})
}
