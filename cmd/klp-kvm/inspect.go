package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"klp-kvm/api"
	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/linuxkernel"
)

// inspectDefaultKernel returns the kernel `inspect PATCH.o` resolves against
// when --kernel is not given: the repository's guestkernel/prebuilt/vmlinux
// when run inside the repository (it may be newer than this binary), else
// the guest kernel embedded in the binary. An empty name means none.
var inspectDefaultKernel = func() (name string, data []byte) {
	if p := repoPrebuiltKernel(); p != "" {
		if d, err := readInput(p); err == nil {
			return p, d
		}
	}
	if d := guestkernel.Vmlinux(); len(d) > 0 {
		return "embedded guest kernel", d
	}
	return "", nil
}

// repoPrebuiltKernel finds guestkernel/prebuilt/vmlinux in the repository
// holding the working directory, or "".
func repoPrebuiltKernel() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			cand := filepath.Join(dir, "guestkernel", "prebuilt", "vmlinux")
			if st, err := os.Stat(cand); err == nil && st.Mode().IsRegular() {
				return cand
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

const inspectUsage = `usage: klp-kvm inspect KERNEL [--symbol NAME] [--json]
       klp-kvm inspect PATCH.o [--kernel KERNEL] [--base ADDR] [--json]
       klp-kvm inspect --live [--func NAME]... [--api SOCK] [--json]

Without --kernel a patch is resolved against the repository's
guestkernel/prebuilt/vmlinux, else the guest kernel built into klp-kvm.

Offline: reads a guest kernel ELF (patchable functions, fentry sites, why
others are not patchable) or a livepatch object (name, objects, funcs with
their resolved old functions, layout in the patch area, relocation plan,
problems). Exit status: 0 ok, 1 problems found, 2 usage.

--live: the running Linux guest's kernel behind the API socket, read by the
host from guest memory alone: release, KASLR offset, symbol source and
count, BTF types, the task list (pid, comm, state, cpu, kernel stack) and
the fentry site of each --func (default cmdline_proc_show).
`

// cmdInspect implements `klp-kvm inspect`. The logic is elfpatch's
// (KernelReport, PatchReport); this only parses flags and prints.
func cmdInspect(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	symbol := fs.String("symbol", "", "show this kernel symbol's details")
	kernel := fs.String("kernel", "", "kernel to resolve a patch against")
	asJSON := fs.Bool("json", false, "JSON output")
	base := fs.Uint64("base", layout.PatchAreaVirt, "virtual base to lay a patch out at")
	live := fs.Bool("live", false, "the running Linux guest's kernel")
	sock := fs.String("api", "", "control API socket (with --live)")
	var funcs []string
	fs.Func("func", "function whose fentry site to check (with --live; repeatable)", func(v string) error {
		funcs = append(funcs, v)
		return nil
	})
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, inspectUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm inspect: %v\n%s", err, inspectUsage)
		return 2
	}
	if *live {
		if len(pos) != 0 || *symbol != "" || *kernel != "" {
			fmt.Fprintf(stderr, "klp-kvm inspect: --live takes no file, --symbol or --kernel\n%s", inspectUsage)
			return 2
		}
		return inspectLive(funcs, *sock, *asJSON, stdout, stderr)
	}
	if len(funcs) != 0 || *sock != "" {
		fmt.Fprintf(stderr, "klp-kvm inspect: --func and --api apply to --live\n%s", inspectUsage)
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "klp-kvm inspect: want exactly one ELF file\n%s", inspectUsage)
		return 2
	}
	path := pos[0]
	data, err := readInput(path)
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm inspect: %v\n", err)
		return 1
	}
	if !elfpatch.IsObjectFile(data) {
		if *kernel != "" {
			fmt.Fprintf(stderr, "klp-kvm inspect: --kernel applies to a patch object, and %s is not one\n", path)
			return 2
		}
		k, err := elfpatch.ParseKernel(data)
		if err != nil {
			fmt.Fprintf(stderr, "klp-kvm inspect: %s: %v\n", path, err)
			return 1
		}
		r := elfpatch.NewKernelReport(k, *symbol)
		r.Path = path
		return emit(r, r.OK(), *asJSON, stdout, stderr)
	}
	if *symbol != "" {
		fmt.Fprintf(stderr, "klp-kvm inspect: --symbol applies to a kernel, and %s is a patch object\n", path)
		return 2
	}
	kpath := *kernel
	var kdata []byte
	if kpath == "" {
		kpath, kdata = inspectDefaultKernel()
	} else if kdata, err = readInput(kpath); err != nil {
		fmt.Fprintf(stderr, "klp-kvm inspect: kernel: %v\n", err)
		return 1
	}
	var k *elfpatch.Kernel
	if kpath != "" {
		if k, err = elfpatch.ParseKernel(kdata); err != nil {
			fmt.Fprintf(stderr, "klp-kvm inspect: kernel %s: %v\n", kpath, err)
			return 1
		}
	}
	var r *elfpatch.PatchReport
	if p, err := elfpatch.ParsePatch(data); err != nil {
		r = elfpatch.PatchErrorReport(err)
	} else {
		if p.Name == "" {
			p.Name, p.NameSource = elfpatch.ModuleNameFromFile(path), elfpatch.NameFromFile
		}
		r = elfpatch.NewPatchReport(p, k, *base)
	}
	r.Path, r.Kernel = path, kpath
	return emit(r, r.OK(), *asJSON, stdout, stderr)
}

type textReport interface{ WriteText(io.Writer) error }

func emit(r textReport, ok, asJSON bool, stdout, stderr io.Writer) int {
	var err error
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(r)
	} else {
		err = r.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm inspect: %v\n", err)
		return 1
	}
	if !ok {
		return 1
	}
	return 0
}

// readInput reads a whole input file (kernels are tens of MB at most).
func readInput(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Size() > 1<<30 {
		return nil, fmt.Errorf("%s: %d bytes is too large for an ELF image here", path, st.Size())
	}
	return os.ReadFile(path)
}

// inspectLive is `klp-kvm inspect --live`: POST /kernel, printed.
func inspectLive(funcs []string, sock string, asJSON bool, stdout, stderr io.Writer) int {
	if len(funcs) == 0 {
		funcs = []string{"cmdline_proc_show"}
	}
	var rep *linuxkernel.Report
	if code := call(stderr, sock, func(ctx context.Context, c *api.Client) (err error) {
		rep, err = c.Kernel(ctx, funcs)
		return err
	}); code != 0 {
		return code
	}
	return emit(rep, rep.OK(), asJSON, stdout, stderr)
}
