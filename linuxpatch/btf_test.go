package linuxpatch

// The committed BTF blob (testdata/klp-btf-6.1.0-57-amd64.bin) is the part
// of Debian 6.1.0-57-amd64's own BTF that gives the klp structs' layouts:
// klp_patch, klp_object, klp_func, klp_callbacks and klp_state with every
// member at its offset, pointers as void *, integers as they are, and
// every other member type (kobject, list_head, ...) as a byte array of its
// size; and struct module by its size alone. TestCommittedBTFMatchesKernel rebuilds it from the kernel the
// nested tier caches and fails if it differs (KLP_KVM_UPDATE_BTF=1
// rewrites it).

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/btf"

	"klp-kvm/kvm/bzimage"
)

const committedBTF = "testdata/klp-btf-6.1.0-57-amd64.bin"

var klpStructs = []string{"klp_patch", "klp_object", "klp_func", "klp_callbacks", "klp_state"}

// minimalBTF derives the committed blob from a kernel's full BTF.
func minimalBTF(full *btf.Spec) ([]byte, error) {
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	void := &btf.Pointer{Target: &btf.Void{}}
	done := map[string]*btf.Struct{}
	var conv func(t btf.Type) (btf.Type, error)
	convStruct := func(s *btf.Struct) (*btf.Struct, error) {
		if c, ok := done[s.Name]; ok {
			return c, nil
		}
		c := &btf.Struct{Name: s.Name, Size: s.Size}
		done[s.Name] = c
		for _, m := range s.Members {
			t, err := conv(m.Type)
			if err != nil {
				return nil, err
			}
			c.Members = append(c.Members, btf.Member{Name: m.Name, Type: t, Offset: m.Offset, BitfieldSize: m.BitfieldSize})
		}
		return c, nil
	}
	conv = func(t btf.Type) (btf.Type, error) {
		switch u := btf.UnderlyingType(t).(type) {
		case *btf.Pointer:
			return void, nil
		case *btf.Int:
			return &btf.Int{Name: u.Name, Size: u.Size, Encoding: u.Encoding}, nil
		case *btf.Struct:
			for _, n := range klpStructs {
				if u.Name == n {
					return convStruct(u)
				}
			}
		}
		n, err := btf.Sizeof(t)
		if err != nil {
			return nil, err
		}
		return &btf.Array{Index: u32, Type: u8, Nelems: uint32(n)}, nil
	}
	b, err := btf.NewBuilder(nil, nil)
	if err != nil {
		return nil, err
	}
	for _, name := range klpStructs {
		var s *btf.Struct
		if err := full.TypeByName(name, &s); err != nil {
			return nil, err
		}
		c, err := convStruct(s)
		if err != nil {
			return nil, err
		}
		if _, err := b.Add(c); err != nil {
			return nil, err
		}
	}
	// struct module by its size only: the loader's check of
	// .gnu.linkonce.this_module.
	var mod *btf.Struct
	if err := full.TypeByName("module", &mod); err != nil {
		return nil, err
	}
	if _, err := b.Add(&btf.Struct{Name: "module", Size: mod.Size}); err != nil {
		return nil, err
	}
	return b.Marshal(nil, &btf.MarshalOptions{Order: binary.LittleEndian})
}

// testSpec is the committed BTF.
func testSpec(t testing.TB) *btf.Spec {
	t.Helper()
	raw, err := os.ReadFile(committedBTF)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// kernelBTF is the .BTF section of the nested tier's cached Debian kernel
// (the bzImage's xz payload, decompressed by xz-utils because the x86 BCJ
// filter is not in Go's xz packages), or a skip.
func kernelBTF(t testing.TB) []byte {
	t.Helper()
	// Where test/nested/prepare.sh caches it.
	dir := os.Getenv("KLP_KVM_NESTED_CACHE")
	if dir == "" {
		xdg := os.Getenv("XDG_CACHE_HOME")
		if xdg == "" {
			home, _ := os.UserHomeDir()
			xdg = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(xdg, "klp-kvm", "nested")
	}
	bz, err := os.ReadFile(filepath.Join(dir, "current", "vmlinuz"))
	if err != nil {
		t.Skipf("no cached Debian kernel (%v): test/nested/prepare.sh fetches it", err)
	}
	img, err := bzimage.Parse(bz)
	if err != nil {
		t.Fatal(err)
	}
	h := img.Header
	if h.PayloadLength == 0 || uint64(h.PayloadOffset)+uint64(h.PayloadLength) > uint64(len(img.Kernel)) {
		t.Fatalf("payload %#x+%#x outside the %d-byte kernel", h.PayloadOffset, h.PayloadLength, len(img.Kernel))
	}
	payload := img.Kernel[h.PayloadOffset : h.PayloadOffset+h.PayloadLength]
	if !bytes.HasPrefix(payload, []byte("\xfd7zXZ\x00")) {
		t.Skipf("payload is not xz (% x)", payload[:min(6, len(payload))])
	}
	xz, err := exec.LookPath("xz")
	if err != nil {
		t.Skip("no xz binary (xz-utils) to decompress the kernel")
	}
	cmd := exec.Command(xz, "-dc")
	cmd.Stdin = bytes.NewReader(payload)
	var out bytes.Buffer
	cmd.Stdout = &out
	// The payload length includes padding after the stream, which xz
	// reports as trailing garbage once the ELF is complete.
	if err := cmd.Run(); err != nil && out.Len() == 0 {
		t.Fatalf("xz -dc: %v", err)
	}
	f, err := elf.NewFile(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	sec := f.Section(".BTF")
	if sec == nil {
		t.Fatal("the kernel has no .BTF")
	}
	raw, err := sec.Data()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestCommittedBTFMatchesKernel(t *testing.T) {
	raw := kernelBTF(t)
	full, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	want, err := LayoutFromBTF(full)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := minimalBTF(full)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("KLP_KVM_UPDATE_BTF") == "1" {
		if err := os.WriteFile(committedBTF, blob, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := LayoutFromBTF(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if *got != *want {
		t.Errorf("committed layout %+v, the kernel's %+v", *got, *want)
	}
	committed, _ := os.ReadFile(committedBTF)
	if !bytes.Equal(committed, blob) {
		t.Errorf("%s differs from the blob derived from the kernel (%d vs %d bytes): KLP_KVM_UPDATE_BTF=1 rewrites it", committedBTF, len(committed), len(blob))
	}
	t.Logf("kernel .BTF %d bytes -> %d bytes; layout %+v", len(raw), len(blob), *want)
}

func TestLayoutFromBTF(t *testing.T) {
	l, err := LayoutFromBTF(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	// Linux 6.1 x86-64 (include/linux/livepatch.h): mod and objs lead
	// klp_patch; name and funcs lead klp_object; old_name, new_func,
	// old_sympos lead klp_func. The struct sizes are those of the
	// sample's patch, objs[2] and funcs[2] symbols (200, 2*168, 2*152),
	// struct module its .gnu.linkonce.this_module (0x380).
	want := Layout{PatchSize: 200, PatchMod: 0, PatchObjs: 8, PatchStates: 16, PatchReplace: 24,
		ObjectSize: 168, ObjectName: 0, ObjectFuncs: 8, ObjectCallbacks: [4]uint64{16, 24, 32, 40},
		FuncSize: 152, FuncOldName: 0, FuncNewFunc: 8, FuncOldSympos: 16,
		StateSize: 24, StateID: 0, StateVersion: 8, ModuleSize: 0x380}
	if *l != want {
		t.Errorf("layout %+v, want %+v", *l, want)
	}
	if _, err := LayoutFromBTF(nil); !errors.Is(err, ErrFormat) {
		t.Errorf("nil spec: %v", err)
	}
	// A kernel without klp_func in its BTF (CONFIG_LIVEPATCH off).
	b, _ := btf.NewBuilder(nil, nil)
	b.Add(&btf.Struct{Name: "klp_patch", Size: 8, Members: []btf.Member{{Name: "mod", Type: &btf.Pointer{Target: &btf.Void{}}}}})
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	_, err = LayoutFromBTF(spec)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrFormat) {
		t.Errorf("incomplete BTF: %v", err)
	}
}
