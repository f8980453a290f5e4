package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm/agent"
)

// lockedBuf is a kernel log: one record per Write.
type lockedBuf struct {
	mu   sync.Mutex
	recs []string
}

func (b *lockedBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.recs = append(b.recs, string(p))
	return len(p), nil
}

func (b *lockedBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.recs, "")
}

// treeClient runs an agent with a livepatch root in a temporary directory
// and returns the host's client, the root and the guest events it got.
func treeClient(t *testing.T, kmsg io.Writer) (*agent.Client, string, chan agent.Event) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "run", "klp-kvm", "livepatch")
	events := make(chan agent.Event, 16)
	toGuestR, toGuestW := io.Pipe()
	toHostR, toHostW := io.Pipe()
	a := New(Options{LivepatchRoot: root, Kmsg: kmsg, Log: t.Logf})
	done := make(chan error, 1)
	go func() { done <- a.Serve(context.Background(), toGuestR, toHostW); toHostW.Close() }()
	c := agent.New(&pipeRW{Reader: toHostR, Writer: toGuestW, closers: []io.Closer{toGuestW}},
		agent.Options{Timeout: 20 * time.Second, OnEvent: func(ev agent.Event) { events <- ev }})
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	// Serve made the root before it read the first request
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c, root, events
}

// sampleTree is what the host sends for livepatch-sample, enabled.
func sampleTree(name, enabled string) agent.Tree {
	return agent.Tree{
		Dirs: []string{name, name + "/vmlinux", name + "/vmlinux/cmdline_proc_show,1"},
		Files: []agent.TreeFile{
			{Path: name + "/enabled", Data: enabled + "\n", Mode: 0o644},
			{Path: name + "/force", Data: "0\n", Mode: 0o200},
			{Path: name + "/replace", Data: "0\n", Mode: 0o444},
			{Path: name + "/stack_order", Data: "1\n", Mode: 0o444},
			{Path: name + "/transition", Data: "0\n", Mode: 0o444},
			{Path: name + "/vmlinux/patched", Data: enabled + "\n", Mode: 0o444},
		},
	}
}

// listTree lists every path under root: "d/" for directories, "f mode
// content" for files.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case rel == ".":
		case fi.IsDir():
			out = append(out, rel+"/")
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out = append(out, rel+" "+fi.Mode().Perm().String()+" "+strings.TrimSpace(string(b)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestLivepatchTreeReplace(t *testing.T) {
	c, root, _ := treeClient(t, nil)
	ctx := context.Background()
	if got := listTree(t, root); len(got) != 0 {
		t.Fatalf("the root at start: %q, want it empty", got)
	}
	if err := c.LivepatchTree(ctx, sampleTree("livepatch_sample", "1")); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"livepatch_sample/",
		"livepatch_sample/enabled -rw-r--r-- 1",
		"livepatch_sample/force --w------- 0",
		"livepatch_sample/replace -r--r--r-- 0",
		"livepatch_sample/stack_order -r--r--r-- 1",
		"livepatch_sample/transition -r--r--r-- 0",
		"livepatch_sample/vmlinux/",
		"livepatch_sample/vmlinux/cmdline_proc_show,1/",
		"livepatch_sample/vmlinux/patched -r--r--r-- 1",
	}
	if got := listTree(t, root); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The next tree replaces the whole: no stale patch stays.
	if err := c.LivepatchTree(ctx, sampleTree("other", "0")); err != nil {
		t.Fatal(err)
	}
	got := listTree(t, root)
	if len(got) != len(want) || !strings.HasPrefix(got[0], "other/") || got[1] != "other/enabled -rw-r--r-- 0" {
		t.Errorf("tree after the second push: %q", got)
	}
	// Nothing but the root is left next to it (no staging directory).
	ents, err := os.ReadDir(filepath.Dir(root))
	if err != nil || len(ents) != 1 || ents[0].Name() != "livepatch" {
		t.Errorf("next to the root: %v %v", ents, err)
	}
	if err := c.LivepatchTree(ctx, agent.Tree{}); err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, root); len(got) != 0 {
		t.Errorf("after an empty tree: %q", got)
	}
}

// A tree the agent must refuse leaves the one shown as it was.
func TestLivepatchTreeRefused(t *testing.T) {
	c, root, _ := treeClient(t, nil)
	ctx := context.Background()
	if err := c.LivepatchTree(ctx, sampleTree("p", "1")); err != nil {
		t.Fatal(err)
	}
	before := listTree(t, root)
	many := agent.Tree{Dirs: []string{"p"}}
	for i := 0; i < agent.TreeMaxEntries; i++ {
		many.Files = append(many.Files, agent.TreeFile{Path: "p/f" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26)), Data: "0", Mode: 0o444})
	}
	for name, args := range map[string]string{
		"dot-dot":          `{"dirs":[".."],"files":[]}`,
		"absolute":         `{"dirs":["/etc"],"files":[]}`,
		"slash in a name":  `{"dirs":["p"],"files":[["p//x","0",292]]}`,
		"too deep":         `{"dirs":["a","a/b","a/b/c","a/b/c/d"],"files":[]}`,
		"hidden name":      `{"dirs":[".p"],"files":[]}`,
		"space":            `{"dirs":["p q"],"files":[]}`,
		"parent missing":   `{"dirs":["a/b"],"files":[]}`,
		"file in no dir":   `{"dirs":[],"files":[["a/enabled","1",420]]}`,
		"file twice":       `{"dirs":["a"],"files":[["a/x","1",420],["a/x","1",420]]}`,
		"file and dir":     `{"dirs":["a","a/x"],"files":[["a/x","1",420]]}`,
		"data too long":    `{"dirs":["a"],"files":[["a/x","` + strings.Repeat("1", agent.TreeMaxData+1) + `",420]]}`,
		"NUL in data":      `{"dirs":["a"],"files":[["a/x","1\u0000",420]]}`,
		"executable":       `{"dirs":["a"],"files":[["a/x","1",493]]}`,
		"setuid":           `{"dirs":["a"],"files":[["a/x","1",2468]]}`,
		"two elements":     `{"dirs":["a"],"files":[["a/x","1"]]}`,
		"mode not number":  `{"dirs":["a"],"files":[["a/x","1","420"]]}`,
		"null path":        `{"dirs":["a"],"files":[[null,"1",420]]}`,
		"unknown field":    `{"dirs":[],"files":[],"extra":1}`,
		"dirs not strings": `{"dirs":[1],"files":[]}`,
	} {
		var raw json.RawMessage = []byte(args)
		err := c.Call(ctx, "guest-livepatch-tree", raw, nil)
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s: %v, want EINVAL", name, err)
		}
	}
	// too many entries: refused by the host's check already, and by the guest's
	if err := c.LivepatchTree(ctx, many); !errors.Is(err, agent.ErrInvalid) {
		t.Errorf("%d entries: %v", agent.TreeMaxEntries+1, err)
	}
	if err := c.Call(ctx, "guest-livepatch-tree", many, nil); err == nil {
		t.Errorf("%d entries accepted by the guest", agent.TreeMaxEntries+1)
	}
	if err := c.Call(ctx, "guest-livepatch-tree", nil, nil); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("no arguments: %v", err)
	}
	if got := listTree(t, root); strings.Join(got, "\n") != strings.Join(before, "\n") {
		t.Errorf("tree changed by refused pushes:\n%s", strings.Join(got, "\n"))
	}
}

func TestLivepatchTreeOff(t *testing.T) {
	c := client(t, Options{})
	err := c.LivepatchTree(context.Background(), sampleTree("p", "1"))
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("without a root: %v, want EOPNOTSUPP", err)
	}
}

// nextWrite waits for the next sysfs-write event.
func nextWrite(t *testing.T, events chan agent.Event) agent.SysfsWrite {
	t.Helper()
	select {
	case ev := <-events:
		w, err := agent.ParseSysfsWrite(ev)
		if err != nil {
			t.Fatalf("event %s %s: %v", ev.Name, ev.Data, err)
		}
		return w
	case <-time.After(poll.Timeout):
		t.Fatal("no sysfs-write event")
	}
	panic("unreachable")
}

// A guest process's write is forwarded as the event klp-kvm's own guest
// kernel sends; the host's answer ends up in the kernel log.
func TestLivepatchTreeWrite(t *testing.T) {
	kmsg := &lockedBuf{}
	c, root, events := treeClient(t, kmsg)
	ctx := context.Background()
	if err := c.LivepatchTree(ctx, sampleTree("livepatch_sample", "1")); err != nil {
		t.Fatal(err)
	}
	enabled := filepath.Join(root, "livepatch_sample", "enabled")
	// as `echo 0 > enabled` does: open with O_TRUNC, one write, close
	if err := os.WriteFile(enabled, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The first event is this write: the agent's own writes (the push
	// above) raised none.
	w := nextWrite(t, events)
	if w.Path != enabled || w.Value != "0" || w.ID == 0 {
		t.Errorf("event %+v, want path %s value 0", w, enabled)
	}
	// The host refuses it and shows the real state again.
	if err := c.Notify("sysfs-reply", map[string]any{"id": w.ID, "errno": int(syscall.EBUSY), "desc": "linuxlive: disable \"livepatch_sample\": busy\nnot switched"}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the refusal in the kernel log", func() bool { return strings.Contains(kmsg.String(), "EBUSY") })
	if got, want := kmsg.String(), "<4>klp-kvm: livepatch_sample/enabled=0: EBUSY: linuxlive: disable \"livepatch_sample\": busy\\nnot switched\n"; got != want {
		t.Errorf("kernel log %q, want %q", got, want)
	}
	if err := c.LivepatchTree(ctx, sampleTree("livepatch_sample", "1")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(enabled); string(b) != "1\n" {
		t.Errorf("enabled after the push: %q", b)
	}
	// force: written through the new tree's file; success is logged too
	force := filepath.Join(root, "livepatch_sample", "force")
	if err := os.WriteFile(force, []byte("1"), 0o200); err != nil {
		t.Fatal(err)
	}
	w2 := nextWrite(t, events)
	if w2.Path != force || w2.Value != "1" || w2.ID == w.ID {
		t.Errorf("second event %+v", w2)
	}
	c.SysfsReply(w2.ID, 0)
	poll.Until(t, "the success in the kernel log", func() bool {
		return strings.HasSuffix(kmsg.String(), "<6>klp-kvm: livepatch_sample/force=1: done\n")
	})
	// A reply nobody waits for, and a malformed one, change nothing.
	c.SysfsReply(w2.ID, int(syscall.EIO))
	c.Notify("sysfs-reply", map[string]any{"id": "x"})
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(kmsg.String(), "EIO") {
		t.Errorf("a second reply was logged: %q", kmsg.String())
	}
}

// A value the agent refuses itself (too long for an attribute) is not
// forwarded; the file shows the tree's value again.
func TestLivepatchTreeWriteTooLong(t *testing.T) {
	kmsg := &lockedBuf{}
	c, root, events := treeClient(t, kmsg)
	if err := c.LivepatchTree(context.Background(), sampleTree("p", "1")); err != nil {
		t.Fatal(err)
	}
	enabled := filepath.Join(root, "p", "enabled")
	if err := os.WriteFile(enabled, []byte(strings.Repeat("1", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the file restored", func() bool {
		b, _ := os.ReadFile(enabled)
		return string(b) == "1\n"
	})
	if !strings.Contains(kmsg.String(), "<4>klp-kvm: p/enabled=") || !strings.Contains(kmsg.String(), "EINVAL") {
		t.Errorf("kernel log %q", kmsg.String())
	}
	// the restored tree is watched: the next write is forwarded
	if err := os.WriteFile(enabled, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if w := nextWrite(t, events); w.Value != "0" {
		t.Errorf("event after the restore: %+v", w)
	}
}

// A tree larger than one request line arrives in parts and is shown
// whole after the last; parts out of order are refused and the tree
// shown stays; part 0 starts afresh.
func TestLivepatchTreeParts(t *testing.T) {
	c, root, _ := treeClient(t, nil)
	ctx := context.Background()
	var big agent.Tree
	for i := 0; i < 60; i++ {
		tr := sampleTree(fmt.Sprintf("livepatch_sample_%02d", i), "1")
		big.Dirs = append(big.Dirs, tr.Dirs...)
		big.Files = append(big.Files, tr.Files...)
	}
	if err := c.LivepatchTree(ctx, big); err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, root); len(got) != len(big.Dirs)+len(big.Files) {
		t.Fatalf("%d entries shown, want %d", len(got), len(big.Dirs)+len(big.Files))
	}
	before := listTree(t, root)
	part := func(n int, more bool, dirs ...string) error {
		return c.Call(ctx, "guest-livepatch-tree", agent.TreePart{Tree: agent.Tree{Dirs: dirs, Files: []agent.TreeFile{}}, Part: n, More: more}, nil)
	}
	if err := part(0, true, "a"); err != nil {
		t.Fatal(err)
	}
	if err := part(2, false, "b"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("part 2 after 0: %v, want EINVAL", err)
	}
	if err := part(1, false, "b"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("part 1 after a refused sequence: %v, want EINVAL", err)
	}
	if got := listTree(t, root); strings.Join(got, "\n") != strings.Join(before, "\n") {
		t.Error("refused parts changed the tree shown")
	}
	// an unfinished tree is dropped by the next part 0
	if err := part(0, true, "stale"); err != nil {
		t.Fatal(err)
	}
	if err := part(0, true, "x"); err != nil {
		t.Fatal(err)
	}
	if err := part(1, false, "y"); err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, root); strings.Join(got, " ") != "x/ y/" {
		t.Errorf("after parts x, y: %q", got)
	}
}
