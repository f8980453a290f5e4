package livepatch

import "testing"

// TestEnableReusesRegisterLayout: an enable whose image lands where
// register laid the patch out dry uses that layout (one Layout per patch,
// not two: the slow first enable of issue 14), and one that lands
// elsewhere lays it out again, at its own address.
func TestEnableReusesRegisterLayout(t *testing.T) {
	_, m := newManager(t, 1, nil)
	a, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o")
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Register(patchObj(t, "livepatch-sample2"), "livepatch-sample2.o")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Enable(a.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if a.image != a.dry || a.ImageAddr != a.dry.Base {
		t.Fatalf("first enable at %#x laid the patch out again (dry layout at %#x)", a.ImageAddr, a.dry.Base)
	}
	// b's dry layout is at the start of the area too, where a now is.
	if _, err := m.Enable(b.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if b.image == b.dry || b.image.Base != b.ImageAddr || b.ImageAddr == b.dry.Base {
		t.Fatalf("second patch: image at %#x (base %#x), dry layout at %#x", b.ImageAddr, b.image.Base, b.dry.Base)
	}
}
