package main

import (
	"bytes"
	"strings"
	"testing"

	"klp-kvm/api/apitest"
)

// TestStatusShowsPatchArea: `status` prints the machine and, where the
// kernel can be live patched, the patch area's use (issue 12).
func TestStatusShowsPatchArea(t *testing.T) {
	f := apitest.NewAPI(t)
	sock := apitest.ServeUnix(t, f.Handler)
	var out, errb bytes.Buffer
	if rc := dispatch([]string{"patch", "load", "--api", sock, "livepatch-sample"}, &out, &errb); rc != 0 {
		t.Fatalf("load: %d %s", rc, errb.String())
	}
	out.Reset()
	if rc := dispatch([]string{"status", "--api", sock}, &out, &errb); rc != 0 {
		t.Fatalf("status: %d %s", rc, errb.String())
	}
	want := "patch area: " // then "N of M bytes in use ..., 1 patches"
	i := strings.Index(out.String(), want)
	if i < 0 || !strings.Contains(out.String()[i:], "bytes in use") || !strings.Contains(out.String()[i:], "1 patches") || strings.Contains(out.String()[i:], ": 0 of") {
		t.Fatalf("status output:\n%s", out.String())
	}
	if rc := dispatch([]string{"status", "--api", sock, "extra"}, &out, &errb); rc != 2 {
		t.Fatalf("status with an extra argument: exit %d, want 2", rc)
	}
}
