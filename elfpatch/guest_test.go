package elfpatch

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const guestKernelPath = "../guestkernel/prebuilt/vmlinux"

// The samples against the real guest kernel, when it has been built.
func TestSamplesAgainstGuestKernel(t *testing.T) {
	data, err := os.ReadFile(guestKernelPath)
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("no prebuilt guest kernel")
	}
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKernel(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.SiteProblems()) != 0 {
		t.Errorf("site problems: %v", k.SiteProblems())
	}
	if n := len(k.LookupAll("klp_dup_fn")); n != 2 {
		t.Errorf("klp_dup_fn: %d symbols, want 2", n)
	}
	files, _ := filepath.Glob(samplesDir + "/*.o")
	if len(files) < 10 {
		t.Fatalf("%d prebuilt patches", len(files))
	}
	want := map[string]error{
		"bad-ambiguous": ErrAmbiguous, "bad-duplicate": ErrDuplicate, "bad-notpatchable": ErrNotPatchable,
		"bad-oldname": ErrUnresolved, "bad-sympos": ErrUnresolved, "bad-unknown-reloc": ErrUnknownReloc,
		"bad-unresolved": ErrUnresolved,
	}
	for _, f := range files {
		stem := strings.TrimSuffix(filepath.Base(f), ".o")
		p, err := ParsePatchFile(f)
		if err == nil {
			_, err = p.Layout(patchBase, k)
		}
		kind, bad := want[stem]
		switch {
		case bad && !errors.Is(err, kind):
			t.Errorf("%s: %v, want %v", stem, err, kind)
		case !bad && err != nil:
			t.Errorf("%s: %v", stem, err)
		}
	}
}

// livepatch.h's layout is what abi.go decodes: compile the header with the
// Go constants as static assertions.
func TestABIMatchesHeader(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("no gcc")
	}
	src := `#include "livepatch.h"
_Static_assert(sizeof(struct klp_func) == ` + itoa(uint64(klpFuncSize)) + `, "func");
_Static_assert(__builtin_offsetof(struct klp_func, old_name) == ` + itoa(uint64(klpFuncOldName)) + `, "old_name");
_Static_assert(__builtin_offsetof(struct klp_func, new_func) == ` + itoa(uint64(klpFuncNewFunc)) + `, "new_func");
_Static_assert(__builtin_offsetof(struct klp_func, old_sympos) == ` + itoa(uint64(klpFuncOldSympos)) + `, "old_sympos");
_Static_assert(sizeof(struct klp_callbacks) == ` + itoa(uint64(klpCallbacksSize)) + `, "callbacks");
_Static_assert(sizeof(struct klp_object) == ` + itoa(uint64(klpObjectSize)) + `, "object");
_Static_assert(__builtin_offsetof(struct klp_object, name) == ` + itoa(uint64(klpObjectName)) + `, "name");
_Static_assert(__builtin_offsetof(struct klp_object, funcs) == ` + itoa(uint64(klpObjectFuncs)) + `, "funcs");
_Static_assert(__builtin_offsetof(struct klp_object, callbacks) == ` + itoa(uint64(klpObjectCallbacks)) + `, "cbs");
_Static_assert(__builtin_offsetof(struct klp_callbacks, post_unpatch) == 24, "post_unpatch");
_Static_assert(sizeof(struct klp_patch) == ` + itoa(uint64(klpPatchSize)) + `, "patch");
_Static_assert(__builtin_offsetof(struct klp_patch, mod) == ` + itoa(uint64(klpPatchMod)) + `, "mod");
_Static_assert(__builtin_offsetof(struct klp_patch, objs) == ` + itoa(uint64(klpPatchObjs)) + `, "objs");
_Static_assert(__builtin_offsetof(struct klp_patch, states) == ` + itoa(uint64(klpPatchStates)) + `, "states");
_Static_assert(__builtin_offsetof(struct klp_patch, replace) == ` + itoa(uint64(klpPatchReplace)) + `, "replace");
_Static_assert(sizeof(struct klp_state) == ` + itoa(uint64(klpStateSize)) + `, "state");
_Static_assert(__builtin_offsetof(struct klp_state, id) == ` + itoa(uint64(klpStateID)) + `, "id");
_Static_assert(__builtin_offsetof(struct klp_state, version) == ` + itoa(uint64(klpStateVersion)) + `, "version");
_Static_assert(__builtin_offsetof(struct klp_state, data) == ` + itoa(uint64(klpStateData)) + `, "data");
_Static_assert(sizeof(struct klp_patch_ref) == ` + itoa(uint64(klpPatchRefSize)) + `, "patch_ref");
_Static_assert(__builtin_offsetof(struct klp_patch_ref, abi) == ` + itoa(uint64(klpPatchRefABI)) + `, "patch_ref abi");
_Static_assert(KLP_PATCH_ABI == ` + itoa(uint64(PatchABI2)) + `, "KLP_PATCH_ABI");
`
	dir := t.TempDir()
	c := filepath.Join(dir, "abi.c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(gcc, "-fsyntax-only", "-ffreestanding", "-I../guestkernel/include", c).CombinedOutput()
	if err != nil {
		t.Fatalf("livepatch.h disagrees with abi.go: %v\n%s", err, out)
	}
}

// The committed patch objects rebuild byte for byte with Debian 12's gcc.
func TestPatchesReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds with gcc")
	}
	out, err := exec.Command("gcc", "--version").Output()
	if err != nil || !strings.Contains(string(out), "12.2.0") {
		t.Skip("needs gcc 12.2 (Debian 12)")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dir := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", "../guestkernel/patches", "O="+dir)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make: %v\n%s", err, msg)
	}
	built, _ := filepath.Glob(dir + "/*.o")
	if len(built) == 0 {
		t.Fatal("nothing built")
	}
	for _, f := range built {
		committed, err := os.ReadFile(filepath.Join(samplesDir, filepath.Base(f)))
		if err != nil {
			t.Errorf("%s: not committed: %v", filepath.Base(f), err)
			continue
		}
		if got := readFile(t, f); string(got) != string(committed) {
			t.Errorf("%s: rebuilt object differs from the committed one", filepath.Base(f))
		}
	}
}
