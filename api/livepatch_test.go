package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/guestkernel"
	"klp-kvm/livepatch"
	"klp-kvm/livepatch/fakeguest"
)

// newLivepatchServer serves the livepatch routes over a fake guest, on a
// TCP httptest server (its URL is plain HTTP, for the raw-request tests).
func newLivepatchServer(t *testing.T) (*httptest.Server, *fakeguest.Guest) {
	t.Helper()
	lm, g := apitest.NewManager(t, 1)
	mux := http.NewServeMux()
	api.LivepatchRoutes(mux, lm, nil)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, g
}

func post(t *testing.T, url string, body any) (int, api.ErrorReply, api.OpReply) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	resp, err := http.Post(url, "application/json", rd)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	json.NewDecoder(resp.Body).Decode(&raw)
	var er api.ErrorReply
	var op api.OpReply
	json.Unmarshal(raw, &er)
	json.Unmarshal(raw, &op)
	return resp.StatusCode, er, op
}

func TestLivepatchRoutes(t *testing.T) {
	srv, g := newLivepatchServer(t)
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		t.Fatal(err)
	}
	code, er, op := post(t, srv.URL+"/patches", api.PatchRequest{Op: "register", Object: obj})
	if code != 200 || op.Patch != "livepatch_sample" {
		t.Fatalf("register: %d %+v %+v", code, er, op)
	}
	code, er, _ = post(t, srv.URL+"/patches", api.PatchRequest{Op: "register", Object: obj})
	if code != http.StatusConflict || er.Errno != "EEXIST" {
		t.Fatalf("duplicate: %d %+v", code, er)
	}
	code, er, _ = post(t, srv.URL+"/patches", api.PatchRequest{Object: []byte("junk"), Name: "junk.o"})
	if code != http.StatusBadRequest || er.Errno != "EINVAL" {
		t.Fatalf("bad object: %d %+v", code, er)
	}
	code, _, op = post(t, srv.URL+"/patches/livepatch_sample/enable", api.OpRequest{DeadlineMS: 100})
	if code != 200 || op.Result == nil || op.Result.Funcs != 1 {
		t.Fatalf("enable: %d %+v", code, op)
	}
	code, er, _ = post(t, srv.URL+"/patches/livepatch_sample/enable", nil)
	if code != http.StatusBadRequest || er.Errno != "EINVAL" {
		t.Fatalf("enable twice: %d %+v", code, er)
	}
	code, er, _ = post(t, srv.URL+"/patches/livepatch_sample/unregister", nil)
	if code != http.StatusConflict || er.Errno != "EBUSY" {
		t.Fatalf("unregister enabled: %d %+v", code, er)
	}
	code, er, _ = post(t, srv.URL+"/patches/nope/disable", nil)
	if code != http.StatusNotFound || er.Errno != "ENOENT" {
		t.Fatalf("unknown patch: %d %+v", code, er)
	}
	code, er, _ = post(t, srv.URL+"/patches/livepatch_sample/explode", nil)
	if code != http.StatusNotFound {
		t.Fatalf("unknown op: %d %+v", code, er)
	}
	resp, err := http.Get(srv.URL + "/patches")
	if err != nil {
		t.Fatal(err)
	}
	var st livepatch.Status
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if len(st.Patches) != 1 || !st.Patches[0].Enabled || len(st.Redirected) != 1 {
		t.Fatalf("status %+v", st)
	}
	code, _, _ = post(t, srv.URL+"/patches/livepatch_sample/unload", nil)
	if sf, _ := g.Sysfs(); code != 200 || len(sf) != 0 {
		t.Fatalf("unload: %d, sysfs %+v", code, sf)
	}
	resp, err = http.Get(srv.URL + "/status")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status: %v", err)
	}
	resp.Body.Close()
}
