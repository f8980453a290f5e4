package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// LinuxLivepatchRoot is where the agent of a Linux guest (guestagent)
// shows the host's live patches: the tree of Linux's
// /sys/kernel/livepatch, which stays Linux's own. The host (vmm) and the
// agent (cmd/klp-agent) both take it from here.
const LinuxLivepatchRoot = "/run/klp-kvm/livepatch"

// Bounds of a Tree (guest-livepatch-tree): what a hostile or buggy host
// could make the agent create. A tree larger than one request line goes
// in parts (TreePart).
const (
	TreeMaxEntries = 2048 // directories + files: ~200 patches of one function
	TreeMaxParts   = 64   // requests of one tree
	TreeMaxDepth   = 3    // <patch>/<object>/<function,sympos>
	TreeMaxName    = 255  // bytes of one path component (NAME_MAX)
	TreeMaxData    = 64   // bytes of one file (an attribute value)
)

// Tree is the argument of guest-livepatch-tree: the whole livepatch tree
// the guest shows, relative to its root. The agent replaces what it shows
// with exactly this, so nothing stale stays. Dirs lists every directory
// (a parent before its children); each file's directory is the root or
// a listed one.
type Tree struct {
	Dirs  []string   `json:"dirs"`
	Files []TreeFile `json:"files"`
}

// TreeFile is one attribute file: its path, its content and its mode
// (permission bits only, as Linux's sysfs gives them: 0644 enabled, 0200
// force, 0444 the read-only ones). On the wire it is the array
// [path, data, mode], which keeps a tree of many patches within one line.
type TreeFile struct {
	Path string
	Data string
	Mode uint32
}

// MarshalJSON writes [path, data, mode].
func (f TreeFile) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{f.Path, f.Data, f.Mode})
}

// UnmarshalJSON reads [path, data, mode] strictly: exactly three
// elements, two strings and a number.
func (f *TreeFile) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("a file is [path, data, mode]: %v", err)
	}
	if len(raw) != 3 {
		return fmt.Errorf("a file is [path, data, mode], got %d elements", len(raw))
	}
	var g TreeFile
	if err := json.Unmarshal(raw[0], &g.Path); err != nil || bytes.Equal(raw[0], []byte("null")) {
		return fmt.Errorf("file path: not a string")
	}
	if err := json.Unmarshal(raw[1], &g.Data); err != nil || bytes.Equal(raw[1], []byte("null")) {
		return fmt.Errorf("file %q: data is not a string", g.Path)
	}
	if err := json.Unmarshal(raw[2], &g.Mode); err != nil || bytes.Equal(raw[2], []byte("null")) {
		return fmt.Errorf("file %q: mode is not a number", g.Path)
	}
	*f = g
	return nil
}

// treeNameOK is the name charset: what Linux allows in a livepatch's
// module name ([A-Za-z0-9_-]), an object's (module) name and a function
// directory "<name>,<sympos>" (C identifiers, with '.' of compiler
// clones such as "foo.cold"). Nothing that means something to a path or
// a shell ('/', NUL, spaces, '*'); no leading '.' (no ".", "..", and the
// agent's own staging names start with '.').
func treeNameOK(s string) bool {
	if s == "" || len(s) > TreeMaxName || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.', c == ',':
		default:
			return false
		}
	}
	return true
}

// checkTreePath checks one relative path: 1..TreeMaxDepth components of
// the name charset.
func checkTreePath(p string) error {
	parts := strings.Split(p, "/")
	if len(parts) > TreeMaxDepth {
		return fmt.Errorf("%q: deeper than %d", clip(p), TreeMaxDepth)
	}
	for _, c := range parts {
		if !treeNameOK(c) {
			return fmt.Errorf("%q: component %q is not a name ([A-Za-z0-9_.,-], at most %d bytes, no leading '.')", clip(p), clip(c), TreeMaxName)
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Check validates t as untrusted input (the agent checks every tree it
// gets; the host checks before sending): the bounds above, each
// directory's parent listed before it, each file in a listed directory
// (or the root), no name twice, data within TreeMaxData with no NUL, and
// a mode of permission bits without execute.
func (t Tree) Check() error {
	if n := len(t.Dirs) + len(t.Files); n > TreeMaxEntries {
		return errorf("tree", ErrInvalid, "%d entries, at most %d", n, TreeMaxEntries)
	}
	seen := make(map[string]bool, len(t.Dirs)+len(t.Files))
	dirs := make(map[string]bool, len(t.Dirs))
	parentOK := func(p string) bool {
		i := strings.LastIndexByte(p, '/')
		return i < 0 || dirs[p[:i]]
	}
	for _, d := range t.Dirs {
		if err := checkTreePath(d); err != nil {
			return &Error{Op: "tree", Kind: ErrInvalid, Detail: "directory", Err: err}
		}
		if seen[d] {
			return errorf("tree", ErrInvalid, "%q listed twice", clip(d))
		}
		if !parentOK(d) {
			return errorf("tree", ErrInvalid, "directory %q before its parent", clip(d))
		}
		seen[d], dirs[d] = true, true
	}
	for _, f := range t.Files {
		if err := checkTreePath(f.Path); err != nil {
			return &Error{Op: "tree", Kind: ErrInvalid, Detail: "file", Err: err}
		}
		if seen[f.Path] {
			return errorf("tree", ErrInvalid, "%q listed twice", clip(f.Path))
		}
		if !parentOK(f.Path) {
			return errorf("tree", ErrInvalid, "file %q is in no listed directory", clip(f.Path))
		}
		if len(f.Data) > TreeMaxData || strings.IndexByte(f.Data, 0) >= 0 {
			return errorf("tree", ErrInvalid, "file %q: %d bytes of data (at most %d, no NUL)", clip(f.Path), len(f.Data), TreeMaxData)
		}
		if f.Mode&^0o666 != 0 {
			return errorf("tree", ErrInvalid, "file %q: mode %#o (permission bits rw only)", clip(f.Path), f.Mode)
		}
		seen[f.Path] = true
	}
	return nil
}

// TreePart is the argument of guest-livepatch-tree on the wire: a tree,
// or one part of it when it does not fit one request line. Part 0 starts
// a tree (dropping any unfinished one), each next part must be the next
// number, and the part with More false ends it: the agent then checks the
// whole (the concatenation of the parts' Dirs and Files) and shows it.
type TreePart struct {
	Tree
	Part int  `json:"part"`
	More bool `json:"more"`
}

// LivepatchTree is guest-livepatch-tree: the agent of a Linux guest
// replaces the tree it shows under LinuxLivepatchRoot with t, sent in
// as many parts as the request size needs (parents before children, as
// t lists them). A tree that fails Check is refused before sending.
func (c *Client) LivepatchTree(ctx context.Context, t Tree) error {
	if err := t.Check(); err != nil {
		return err
	}
	parts, err := splitTree(t, c.opts.MaxRequest)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if err := c.Call(ctx, "guest-livepatch-tree", p, nil); err != nil {
			return err
		}
	}
	return nil
}

// treeEnvelope bounds the request around a part's entries:
// {"execute":"guest-livepatch-tree","arguments":{"dirs":[],"files":[],"part":NN,"more":false},"id":N}.
const treeEnvelope = 160

// splitTree cuts t into parts whose requests fit max bytes each.
func splitTree(t Tree, max int) ([]TreePart, error) {
	var parts []TreePart
	cur := TreePart{Tree: Tree{Dirs: []string{}, Files: []TreeFile{}}}
	size := treeEnvelope
	add := func(n int) {
		if size+n+1 > max && len(cur.Dirs)+len(cur.Files) > 0 {
			cur.More = true
			parts = append(parts, cur)
			cur = TreePart{Tree: Tree{Dirs: []string{}, Files: []TreeFile{}}, Part: len(parts)}
			size = treeEnvelope
		}
		size += n + 1
	}
	for _, d := range t.Dirs {
		b, _ := json.Marshal(d)
		add(len(b))
		cur.Dirs = append(cur.Dirs, d)
	}
	for _, f := range t.Files {
		b, _ := json.Marshal(f)
		add(len(b))
		cur.Files = append(cur.Files, f)
	}
	parts = append(parts, cur)
	if len(parts) > TreeMaxParts || size > max {
		return nil, errorf("guest-livepatch-tree", ErrTooLarge, "%d parts of at most %d bytes", len(parts), max)
	}
	return parts, nil
}
