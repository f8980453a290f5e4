package guest

import (
	"bufio"
	"os"
	"testing"
	"time"

	"klp-kvm/kvm"
	"klp-kvm/kvm/emu"
)

func TestSmoke(t *testing.T) {
	img, err := os.ReadFile("../../guestkernel/build/vmlinux")
	if err != nil {
		t.Fatal(err)
	}
	var opts []emu.Option
	if p := os.Getenv("TRACE"); p != "" {
		f, _ := os.Create(p)
		w := bufio.NewWriterSize(f, 1<<20)
		defer w.Flush()
		opts = append(opts, emu.WithTrace(w))
	}
	m, err := kvm.New(kvm.Config{Engine: emu.New(opts...), CPUs: 2, Kernel: img, Cmdline: "klp.selftest", Console: os.Stdout})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	go func() { time.Sleep(5 * time.Second); t.Log("stopping"); m.Stop() }()
	code, err := m.Run()
	t.Logf("code %d err %v", code, err)
}
