package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/kvm/agent"
	"klp-kvm/livepatch"
	"klp-kvm/patchbuild"
	"klp-kvm/vmm"
)

// `klp-kvm build` end to end: every fix of guestkernel/fixes is built
// from its diff against the embedded kernel's sources (patchbuild), and
// what its trailers say is checked in one booted guest: the refusals and
// their messages; for the others, the guest's behaviour before the patch,
// with it, and again after unloading it (each fix loads, is checked, and
// unloads in turn).

const fixesDir = "../../guestkernel/fixes"

func TestBuildCorpus(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc: `klp-kvm build` needs the compiler the kernel was built with")
	}
	if _, err := os.Stat(filepath.Join(fixesDir, "..", "Makefile")); err != nil {
		// a test binary run outside the repository (the KVM tiers' VMs)
		t.Skipf("no guest kernel sources here (%v)", err)
	}
	files, err := filepath.Glob(filepath.Join(fixesDir, "*.diff"))
	if err != nil || len(files) < 12 {
		t.Fatalf("corpus: %d fixes in %s (%v), want at least 12", len(files), fixesDir, err)
	}
	k, err := elfpatch.ParseKernel(guestkernel.Vmlinux())
	if err != nil {
		t.Fatal(err)
	}
	s := boot(t, 2)
	cache := &patchbuild.Cache{}
	loaded, ran := 0, 0
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".diff")
		t.Run(name, func(t *testing.T) {
			ran++
			diff, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			spec, err := patchbuild.ParseFixSpec(diff)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			plan, obj, err := patchbuild.Build(diff, patchbuild.Options{Src: "../../guestkernel", Kernel: k,
				KernelName: "embedded guest kernel", DiffName: path, Cache: cache})
			t.Logf("build: %v", time.Since(start).Round(time.Millisecond))
			switch {
			case len(spec.Errors) > 0:
				if err == nil || obj != nil {
					t.Fatalf("built; want an error matching %v", spec.Errors)
				}
				for _, re := range spec.Errors {
					if !re.MatchString(err.Error()) {
						t.Errorf("error %q does not match %q", err, re)
					}
				}
				return
			case len(spec.Refused) > 0:
				if !errors.Is(err, patchbuild.ErrRefused) || obj != nil {
					t.Fatalf("want a refusal and no object, got %v", err)
				}
				for _, e := range spec.Refused {
					if !slices.ContainsFunc(plan.Refused, e.Matches) {
						t.Errorf("no refusal %s %s ~ %v in %v", e.Kind, e.Symbol, e.Message, plan.Refused)
					}
				}
				t.Logf("refused: %v", plan.Refused)
				return
			case err != nil:
				t.Fatal(err)
			}
			for _, e := range spec.Warnings {
				if !slices.ContainsFunc(plan.Warnings, e.Matches) {
					t.Errorf("no warning %s %s in %v", e.Kind, e.Symbol, plan.Warnings)
				}
			}
			for _, w := range spec.Writes {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := s.Agent.FileWrite(ctx, w[0], w[1])
				cancel()
				if err != nil {
					t.Fatal(err)
				}
			}
			runChecks(t, s, spec, false, "unpatched")
			opts := livepatch.Options{}
			if spec.Enable != "" {
				opts.Deadline = time.Second
			}
			p, res, err := s.Manager.Load(obj, name+".o", opts)
			if spec.Enable != "" {
				if err == nil || !strings.Contains(err.Error(), spec.Enable) {
					t.Fatalf("enable: want %s, got %v", spec.Enable, err)
				}
				if n := len(s.Manager.Patches()); n != 0 {
					t.Fatalf("%d patches left after a failed load", n)
				}
				t.Logf("enable refused as expected: %v", err)
				runChecks(t, s, spec, false, "after the failed enable")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			unloaded := false
			defer func() {
				if !unloaded {
					s.Manager.Unload(p.Name, livepatch.Options{Force: true})
				}
			}()
			loaded++
			t.Logf("enabled %s: %d funcs, %v", p.Name, len(plan.Changed), res.Total)
			if out := strings.TrimSpace(sh(t, s, "cat /sys/kernel/livepatch/"+p.Name+"/enabled")); out != "1" {
				t.Errorf("sysfs enabled = %q", out)
			}
			runChecks(t, s, spec, true, "patched")
			if _, err := s.Manager.Unload(p.Name, livepatch.Options{}); err != nil {
				t.Fatal(err)
			}
			unloaded = true
			runChecks(t, s, spec, false, "unloaded")
		})
	}
	if ran == len(files) && loaded < 12 { // (not when -run picked some)
		t.Errorf("%d fixes loaded and checked, want at least 12", loaded)
	}
	if st := s.Manager.Status(); st.PatchAreaInUse != 0 || len(st.Patches) != 0 {
		t.Errorf("left behind: %d patches, %d bytes of patch area", len(st.Patches), st.PatchAreaInUse)
	}
}

// runChecks runs a fix's guest commands and matches their output.
func runChecks(t *testing.T, s *vmm.VMM, spec *patchbuild.FixSpec, patched bool, phase string) {
	t.Helper()
	for _, c := range spec.Checks {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r, err := s.Agent.Exec(ctx, c.Cmd)
		cancel()
		out := r.Output
		if err != nil {
			// An error reply of the agent is what the checks see.
			var ae *agent.Error
			if !errors.As(err, &ae) || !errors.Is(err, agent.ErrGuest) {
				t.Fatalf("%s: %q: %v", phase, c.Cmd, err)
			}
			out = "agent error: " + ae.Detail
		}
		want, wantNot := c.Before, c.BeforeNot
		if patched {
			want, wantNot = c.After, c.AfterNot
		}
		for _, re := range want {
			if !re.MatchString(out) {
				t.Errorf("%s: %q printed %q, want a match of %q", phase, c.Cmd, out, re)
			}
		}
		for _, re := range wantNot {
			if re.MatchString(out) {
				t.Errorf("%s: %q printed %q, want no match of %q", phase, c.Cmd, out, re)
			}
		}
	}
}
