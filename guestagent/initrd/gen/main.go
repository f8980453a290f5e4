// Command gen rebuilds guestagent/initrd/prebuilt: the klp-agent binary
// (go build, reproducible flags) packed as the default Linux initramfs,
// and TOOLCHAIN, the Go version that built it. Run from anywhere in the
// module: go generate ./guestagent/initrd.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"klp-kvm/guestagent/initrd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run() error {
	mod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return err
	}
	root := filepath.Dir(strings.TrimSpace(string(mod)))
	agent, err := initrd.BuildAgent(root)
	if err != nil {
		return err
	}
	archive, err := initrd.Build(initrd.Options{Agent: agent})
	if err != nil {
		return err
	}
	ver, err := initrd.GoVersion()
	if err != nil {
		return err
	}
	dir := filepath.Join(root, "guestagent", "initrd", "prebuilt")
	if err := os.WriteFile(filepath.Join(dir, "initramfs.cpio.gz"), archive, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "TOOLCHAIN"), []byte(ver+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("initramfs.cpio.gz: %d bytes (agent %d bytes), %s\n", len(archive), len(agent), ver)
	return nil
}
