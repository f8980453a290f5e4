package api

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// The socket is put in place without ever replacing a file another
// server created meanwhile.
func TestPlaceNoReplace(t *testing.T) {
	dir := t.TempDir()
	tmp, path := filepath.Join(dir, "tmp"), filepath.Join(dir, "sock")
	os.WriteFile(tmp, []byte("new"), 0o600)
	os.WriteFile(path, []byte("theirs"), 0o600)
	if err := placeNoReplace(tmp, path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("onto an existing file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "theirs" {
		t.Fatalf("replaced: %q", b)
	}
	os.Remove(path)
	if err := placeNoReplace(tmp, path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Fatalf("placed: %q", b)
	}
}
