package elfpatch

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestReportsRender(t *testing.T) {
	k := fixtureKernel(t)
	p := loadSample(t, "livepatch-callbacks")
	if al, err := p.Align(); err != nil || al != 32 {
		t.Errorf("Align %d %v", al, err)
	}
	pr := NewPatchReport(p, k, patchBase)
	kr := NewKernelReport(k, "klp_dup_fn")
	er := PatchErrorReport(errorf("parse patch", ErrFormat, "test"))
	if !pr.OK() || !kr.OK() || er.OK() {
		t.Fatalf("OK: %v %v %v", pr.OK(), kr.OK(), er.OK())
	}
	var b strings.Builder
	if err := pr.WriteText(&b); err != nil || !strings.Contains(b.String(), "callback post_unpatch at 0xffffffffa") ||
		!strings.Contains(b.String(), "R_X86_64_PLT32 seq_printf-4 [kernel]") {
		t.Errorf("patch text:\n%s", b.String())
	}
	b.Reset()
	if err := kr.WriteText(&b); err != nil || !strings.Contains(b.String(), "sympos 2: 0xffffffff82") {
		t.Errorf("kernel text:\n%s", b.String())
	}
	b.Reset()
	if err := er.WriteText(&b); err != nil || !strings.Contains(b.String(), "problems (1)") {
		t.Errorf("error text:\n%s", b.String())
	}
	js, err := json.Marshal(pr)
	if err != nil || !json.Valid(js) || !strings.Contains(string(js), `"base":"0xffffffffa0000000"`) {
		t.Errorf("patch json: %v %s", err, js)
	}
	var back struct {
		Objects []struct {
			Callbacks map[string]string `json:"callbacks"`
		} `json:"objects"`
	}
	if err := json.Unmarshal(js, &back); err != nil || len(back.Objects[0].Callbacks) != 4 {
		t.Errorf("callbacks in json: %v %+v", err, back)
	}
}
