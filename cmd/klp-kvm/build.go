package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/patchbuild"
)

const buildUsage = `usage: klp-kvm build [--src DIR] [--kernel K] [--name NAME] [-o OUT.o] [--dry-run] [--json] [-v] FIX.diff

Builds a live patch object from a fix written as a unified diff of the
kernel sources (git diff in this repository: a/guestkernel/kernel/x.c, or
paths relative to --src, as patch -p1 or -p0 takes them; "-" reads stdin).
Both builds, before and after the diff, happen in a scratch directory with
the kernel's own flags; the changed functions are compared by symbol and
written as a patch object for 'klp-kvm patch load' (one klp_func each).
What cannot be patched is refused by name, and nothing is written.

  --src DIR     kernel source tree (default: the repository's guestkernel/)
  --kernel K    the running kernel's image, which the unpatched build must
                match (default: DIR/prebuilt/vmlinux, else the embedded one)
  --name NAME   patch name (default: the diff's file name, '-' -> '_')
  -o OUT.o      output (default: the diff's stem + .o, here)
  --dry-run     print the plan (changed, new and refused functions); write nothing
  --json        the plan as JSON
  -v            compile progress on stderr
  --keep        keep the scratch directory

Exit status: 0 built (or would build), 1 refused or failed, 2 usage.
See docs/patch-build.md.
`

// cmdBuild implements `klp-kvm build`; the logic is patchbuild's.
func cmdBuild(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	src := fs.String("src", "", "kernel source tree")
	kernel := fs.String("kernel", "", "running kernel image")
	name := fs.String("name", "", "patch name")
	out := fs.String("o", "", "output object")
	dry := fs.Bool("dry-run", false, "print the plan, write nothing")
	asJSON := fs.Bool("json", false, "JSON output")
	verbose := fs.Bool("v", false, "progress on stderr")
	keep := fs.Bool("keep", false, "keep the scratch directory")
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, buildUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm build: %v\n%s", err, buildUsage)
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "klp-kvm build: want exactly one diff\n%s", buildUsage)
		return 2
	}
	if *name != "" && !patchbuild.ValidName(*name) {
		fmt.Fprintf(stderr, "klp-kvm build: --name %q: want 1..55 characters of [A-Za-z0-9_-]\n", *name)
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "klp-kvm build: "+format+"\n", a...)
		return 1
	}
	diffPath := pos[0]
	var diff []byte
	if diffPath == "-" {
		diff, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
		diffPath = "stdin.diff"
	} else {
		diff, err = os.ReadFile(diffPath)
	}
	if err != nil {
		return fail("%v", err)
	}
	if *src == "" {
		if *src, err = patchbuild.FindSource("."); err != nil {
			return fail("%v", err)
		}
	}
	kname, kdata := *kernel, []byte(nil)
	if kname == "" {
		if p := filepath.Join(*src, "prebuilt", "vmlinux"); fileExists(p) {
			kname = p
		}
	}
	if kname != "" {
		if kdata, err = os.ReadFile(kname); err != nil {
			return fail("%v", err)
		}
	} else {
		kname, kdata = "embedded guest kernel", guestkernel.Vmlinux()
	}
	k, err := elfpatch.ParseKernel(kdata)
	if err != nil {
		return fail("%s: %v", kname, err)
	}
	opts := patchbuild.Options{Src: *src, Kernel: k, KernelName: kname, Name: *name, DiffName: diffPath, KeepScratch: *keep}
	if *verbose {
		opts.Log = stderr
	}
	plan, obj, berr := patchbuild.Build(diff, opts)
	if berr == nil && !*dry {
		path := *out
		if path == "" {
			stem := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(diffPath), ".diff"), ".patch")
			path = stem + ".o"
		}
		if err := writeObject(path, obj); err != nil {
			return fail("%v", err)
		}
		plan.Output.Path = path
	}
	if plan != nil {
		if *asJSON {
			rep := struct {
				*patchbuild.Plan
				Error string `json:"error,omitempty"`
			}{Plan: plan}
			if berr != nil {
				rep.Error = berr.Error()
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(rep); err != nil {
				return fail("%v", err)
			}
		} else if plan.Name != "" {
			plan.WriteText(stdout)
		}
	}
	if berr != nil {
		return fail("%v", berr)
	}
	return 0
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// writeObject writes the object next to its final name, then renames it.
func writeObject(path string, obj []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".klp-build-*.o")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(obj); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
