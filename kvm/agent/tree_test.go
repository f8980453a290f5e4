package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

// A file travels as [path, data, mode] and comes back the same.
func TestTreeFileJSON(t *testing.T) {
	tr := Tree{Dirs: []string{"p"}, Files: []TreeFile{{Path: "p/enabled", Data: "1\n", Mode: 0o644}}}
	b, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"dirs":["p"],"files":[["p/enabled","1\n",420]]}` {
		t.Errorf("wire form %s", b)
	}
	var back Tree
	if err := json.Unmarshal(b, &back); err != nil || len(back.Files) != 1 || back.Files[0] != tr.Files[0] {
		t.Errorf("round trip: %+v %v", back, err)
	}
	for _, bad := range []string{`["p"]`, `["p","1",420,1]`, `[1,"1",420]`, `["p",null,420]`, `["p","1",-1]`, `{"path":"p"}`, `["p","1",null]`} {
		var f TreeFile
		if err := json.Unmarshal([]byte(bad), &f); err == nil {
			t.Errorf("%s accepted as a file: %+v", bad, f)
		}
	}
}

func TestTreeCheck(t *testing.T) {
	ok := Tree{Dirs: []string{"livepatch_sample", "livepatch_sample/vmlinux", "livepatch_sample/vmlinux/foo.cold,2"},
		Files: []TreeFile{{Path: "livepatch_sample/force", Data: "0\n", Mode: 0o200}, {Path: "top", Data: "", Mode: 0o444}}}
	if err := ok.Check(); err != nil {
		t.Errorf("valid tree: %v", err)
	}
	for name, tr := range map[string]Tree{
		"empty name":   {Dirs: []string{""}},
		"dot":          {Dirs: []string{"."}},
		"hidden":       {Dirs: []string{".x"}},
		"slash":        {Dirs: []string{"a", "a//b"}},
		"deep":         {Dirs: []string{"a", "a/b", "a/b/c", "a/b/c/d"}},
		"long name":    {Dirs: []string{strings.Repeat("a", TreeMaxName+1)}},
		"orphan":       {Dirs: []string{"a/b"}},
		"twice":        {Dirs: []string{"a", "a"}},
		"data":         {Files: []TreeFile{{Path: "f", Data: strings.Repeat("1", TreeMaxData+1)}}},
		"nul":          {Files: []TreeFile{{Path: "f", Data: "\x00"}}},
		"exec":         {Files: []TreeFile{{Path: "f", Mode: 0o755}}},
		"sticky":       {Files: []TreeFile{{Path: "f", Mode: 0o1644}}},
		"shell":        {Files: []TreeFile{{Path: "f;rm", Mode: 0o644}}},
		"non-ASCII":    {Files: []TreeFile{{Path: "f\u00e9", Mode: 0o644}}},
		"too many":     {Files: make([]TreeFile, TreeMaxEntries+1)},
		"file in file": {Files: []TreeFile{{Path: "f", Mode: 0o644}, {Path: "f/g", Mode: 0o644}}},
	} {
		if err := tr.Check(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// A tree goes out as guest-livepatch-tree, with the empty lists spelt
// out; one larger than a request goes in numbered parts, each within the
// request size, that add up to it; one that cannot be sent at all is
// refused before anything is.
func TestLivepatchTreeSend(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	g, host := newFake(t, func(req map[string]any, w io.Writer) {
		b, _ := json.Marshal(req)
		mu.Lock()
		sizes = append(sizes, len(b))
		mu.Unlock()
		sendReturn(w, req, "{}")
	})
	c := New(host, Options{})
	defer c.Close()
	ctx := context.Background()
	if err := c.LivepatchTree(ctx, Tree{}); err != nil {
		t.Fatal(err)
	}
	tr := Tree{Dirs: []string{strings.Repeat("p", 200)}}
	for i := 0; i < 100; i++ {
		tr.Files = append(tr.Files, TreeFile{Path: tr.Dirs[0] + "/" + strings.Repeat("f", 20) + string(rune('a'+i%26)) + string(rune('a'+i/26)), Data: "1\n", Mode: 0o444})
	}
	if err := c.LivepatchTree(ctx, tr); err != nil {
		t.Fatal(err)
	}
	if err := c.LivepatchTree(ctx, Tree{Dirs: []string{".."}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("an invalid tree: %v, want ErrInvalid", err)
	}
	small := New(host, Options{MaxRequest: 400})
	defer small.Close()
	if err := small.LivepatchTree(ctx, tr); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d parts: %v, want ErrTooLarge", len(tr.Files), err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if len(g.seen) < 3 {
		t.Fatalf("%d requests, want the empty tree and the big one in parts", len(g.seen))
	}
	b, _ := json.Marshal(g.seen[0]["arguments"])
	if string(b) != `{"dirs":[],"files":[],"more":false,"part":0}` {
		t.Errorf("arguments of an empty tree: %s", b)
	}
	var got Tree
	for i, req := range g.seen[1:] {
		if req["execute"] != "guest-livepatch-tree" || sizes[i+1] > DefaultMaxRequest {
			t.Errorf("part %d: %v, %d bytes", i, req["execute"], sizes[i+1])
		}
		b, _ := json.Marshal(req["arguments"])
		var p TreePart
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		if p.Part != i || p.More != (i < len(g.seen)-2) {
			t.Errorf("part %d: numbered %d, more %v", i, p.Part, p.More)
		}
		got.Dirs = append(got.Dirs, p.Dirs...)
		got.Files = append(got.Files, p.Files...)
	}
	t.Logf("a %d-entry tree went in %d parts", len(tr.Dirs)+len(tr.Files), len(g.seen)-1)
	if len(got.Dirs) != 1 || len(got.Files) != len(tr.Files) || got.Files[99] != tr.Files[99] {
		t.Errorf("the parts add up to %d dirs and %d files", len(got.Dirs), len(got.Files))
	}
}
