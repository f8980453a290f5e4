package guestagent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
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

// FuzzLivepatchTree feeds arbitrary guest-livepatch-tree arguments to a
// tree in a temporary directory: a push is refused with the tree shown
// unchanged, or accepted and then the root holds exactly what it listed;
// nothing appears outside the root.
func FuzzLivepatchTree(f *testing.F) {
	f.Add([]byte(`{"dirs":["p","p/vmlinux","p/vmlinux/f,1"],"files":[["p/enabled","1\n",420],["p/force","0\n",128]]}`))
	f.Add([]byte(`{"dirs":[],"files":[]}`))
	f.Add([]byte(`{"dirs":[".."],"files":[["../x","1",420]]}`))
	f.Add([]byte(`{"dirs":["a","a/b","a/b/c","a/b/c/d"],"files":[["a/b/c/d/e","",0]]}`))
	f.Add([]byte(`{"dirs":["p"],"files":[["p/x","1",420],["p/x","2",420]]}`))
	f.Fuzz(func(t *testing.T, args []byte) {
		base := t.TempDir()
		root := filepath.Join(base, "livepatch")
		l, err := newLPTree(root, func(string, any) {}, nil, func(string, ...any) {})
		if err != nil {
			t.Fatal(err)
		}
		defer l.close()
		a := New(Options{})
		a.tree.Store(l)
		_, _, rerr := a.livepatchTree(args)
		var want []string
		if tp, _ := decodeTree(args); rerr == nil && tp.More {
			return // a part: nothing shown yet
		}
		if rerr == nil {
			tr, _ := decodeTree(args)
			for _, d := range tr.Dirs {
				want = append(want, d+"/")
			}
			for _, f := range tr.Files {
				want = append(want, fmt.Sprintf("%s %o %q", f.Path, f.Mode, f.Data))
			}
		}
		var got []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == root {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if d.IsDir() {
				got = append(got, rel+"/")
				return nil
			}
			fi, _ := d.Info()
			b, _ := os.ReadFile(p)
			got = append(got, fmt.Sprintf("%s %o %q", rel, fi.Mode().Perm(), b))
			return nil
		})
		sort.Strings(want)
		sort.Strings(got)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("accepted=%v (%v): root holds\n%s\nwant\n%s", rerr == nil, rerr, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		ents, _ := os.ReadDir(base)
		if len(ents) != 1 {
			t.Fatalf("%d entries next to the root", len(ents))
		}
	})
}
