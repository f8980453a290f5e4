package nested

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// The KVM tiers TestNestedKVM runs the KVM-engine tests on. Both run when
// the machine has both: the direct tier proves klp-kvm on the host's own
// KVM (whatever flavour that is: kvm_pvm on a PVM host), the nested tier on
// Debian's kvm_amd under QEMU's emulated SVM, the code path of hardware
// users, whatever the host has.
const (
	tierDirect = "direct" // the host's /dev/kvm
	tierNested = "nested" // a QEMU-TCG VM's /dev/kvm (test/nested/prepare.sh)
)

// hostFacts is what planTiers decides from.
type hostFacts struct {
	Only      string // KLP_KVM_NESTED_DIRECT: "" both, "0" nested only, "1" direct only (even without a usable /dev/kvm)
	Require   bool   // KLP_KVM_NESTED_REQUIRE=1: a tier that should run and cannot is a failure
	DevKVM    bool   // /dev/kvm exists
	KVMErr    error  // opening /dev/kvm: nil = usable
	NestedWhy string // why the nested prerequisites are missing; "" = found
}

// tierPlan is one tier: it runs, or it skips (or, Fail, fails) saying why.
type tierPlan struct {
	Name string
	Run  bool
	Fail bool
	Why  string
}

type plan []tierPlan

// planTiers decides which tiers run. A tier switched off by
// KLP_KVM_NESTED_DIRECT skips. The direct tier skips where the host has no
// /dev/kvm at all; a /dev/kvm that exists but cannot be opened skips too,
// or fails under Require (a broken KVM is not "no KVM"). The nested tier
// skips without its prerequisites, or fails under Require: CI sets it
// once prepare.sh has succeeded.
func planTiers(h hostFacts) plan {
	d := tierPlan{Name: tierDirect}
	switch {
	case h.Only == "0":
		d.Why = "direct KVM tier: disabled by KLP_KVM_NESTED_DIRECT=0"
	case h.Only == "1" || h.KVMErr == nil:
		d.Run = true
	case !h.DevKVM:
		d.Why = "direct KVM tier: no /dev/kvm on this host"
	default:
		d.Why = "direct KVM tier: /dev/kvm exists but cannot be used: " + h.KVMErr.Error()
		d.Fail = h.Require
	}
	n := tierPlan{Name: tierNested}
	switch {
	case h.Only == "1":
		n.Why = "nested KVM tier: disabled by KLP_KVM_NESTED_DIRECT=1"
	case h.NestedWhy == "":
		n.Run = true
	case h.Require:
		n.Fail = true
		n.Why = "nested KVM tier required (KLP_KVM_NESTED_REQUIRE=1) but " + h.NestedWhy + "; run test/nested/prepare.sh"
	default:
		n.Why = "nested KVM tier: " + h.NestedWhy + "; run test/nested/prepare.sh"
	}
	return plan{d, n}
}

// summary is the one line for a plan in which no tier runs: none is true
// then, and fail says whether that is a failure.
func (p plan) summary() (msg string, fail, none bool) {
	var why []string
	for _, tp := range p {
		if tp.Run {
			return "", false, false
		}
		fail = fail || tp.Fail
		why = append(why, tp.Why)
	}
	return "no KVM tier runs: " + strings.Join(why, "; "), fail, true
}

// tiersParallel says whether the tiers run at the same time:
// KLP_KVM_NESTED_PARALLEL=1. Off by default: on 2 shared cores the nested
// VM's TCG thread takes one core for minutes, and the direct tier's
// timing-sensitive tests (pause deadlines, kicks) then compete with it and
// with the rest of `go test ./...`; see docs/testing.md for the measurement.
func tiersParallel() bool {
	return os.Getenv("KLP_KVM_NESTED_PARALLEL") == "1"
}

func TestPlanTiers(t *testing.T) {
	noDev := &os.PathError{Op: "open", Path: "/dev/kvm", Err: os.ErrNotExist}
	denied := errors.New("open /dev/kvm: permission denied")
	const noQEMU = "no qemu-system-x86_64 in PATH"
	type want struct{ direct, nested string } // "run", "skip", "fail"
	for _, c := range []struct {
		name string
		h    hostFacts
		want want
	}{
		{"pvm host, prepared, CI", hostFacts{Require: true, DevKVM: true}, want{"run", "run"}},
		{"pvm host, prepared", hostFacts{DevKVM: true}, want{"run", "run"}},
		{"no kvm, prepared, CI", hostFacts{Require: true, KVMErr: noDev}, want{"skip", "run"}},
		{"kvm, prepare failed", hostFacts{DevKVM: true, NestedWhy: noQEMU}, want{"run", "skip"}},
		{"kvm, not prepared, require", hostFacts{Require: true, DevKVM: true, NestedWhy: noQEMU}, want{"run", "fail"}},
		{"nothing", hostFacts{KVMErr: noDev, NestedWhy: noQEMU}, want{"skip", "skip"}},
		{"broken kvm", hostFacts{DevKVM: true, KVMErr: denied}, want{"skip", "run"}},
		{"broken kvm, require", hostFacts{Require: true, DevKVM: true, KVMErr: denied}, want{"fail", "run"}},
		{"nested only", hostFacts{Only: "0", Require: true, DevKVM: true}, want{"skip", "run"}},
		{"direct only", hostFacts{Only: "1", Require: true, DevKVM: true}, want{"run", "skip"}},
		{"direct forced without kvm", hostFacts{Only: "1", KVMErr: noDev}, want{"run", "skip"}},
	} {
		p := planTiers(c.h)
		if len(p) != 2 || p[0].Name != tierDirect || p[1].Name != tierNested {
			t.Fatalf("%s: plan %+v", c.name, p)
		}
		state := func(tp tierPlan) string {
			switch {
			case tp.Run && !tp.Fail && tp.Why == "":
				return "run"
			case tp.Fail && !tp.Run && tp.Why != "":
				return "fail"
			case !tp.Run && tp.Why != "":
				return "skip"
			}
			return "inconsistent"
		}
		if got := (want{state(p[0]), state(p[1])}); got != c.want {
			t.Errorf("%s: direct %s, nested %s; want %s, %s (%+v)", c.name, got.direct, got.nested, c.want.direct, c.want.nested, p)
		}
	}
}

func TestPlanSummary(t *testing.T) {
	noDev := &os.PathError{Op: "open", Path: "/dev/kvm", Err: os.ErrNotExist}
	msg, fail, none := planTiers(hostFacts{KVMErr: noDev, NestedWhy: "no kernel in /x"}).summary()
	if !none || fail {
		t.Fatalf("none=%v fail=%v", none, fail)
	}
	// One line that says what is missing and what to do.
	for _, s := range []string{"no /dev/kvm", "no kernel in /x", "prepare.sh"} {
		if !strings.Contains(msg, s) || strings.Contains(msg, "\n") {
			t.Errorf("summary %q lacks %q", msg, s)
		}
	}
	if _, fail, none := planTiers(hostFacts{Require: true, KVMErr: noDev, NestedWhy: "x"}).summary(); !none || !fail {
		t.Errorf("required, nothing runs: none=%v fail=%v, want a failure", none, fail)
	}
	if _, _, none := planTiers(hostFacts{DevKVM: true, NestedWhy: "x"}).summary(); none {
		t.Error("direct runs, yet none")
	}
}

func TestRunArgs(t *testing.T) {
	for _, c := range []struct {
		run, skip, pkg, want string
	}{
		{"", "", "./kvm/hw", "-test.bench=KVM -test.benchtime=200x"},
		{"", "", "./test/e2e", ""},
		{"TestKVMKick", "", "./kvm/hw", "-test.run=TestKVMKick"},
		{"BenchmarkKVMKick", "", "./kvm/hw", "-test.bench=KVM -test.benchtime=200x -test.run=BenchmarkKVMKick"},
		{"", "TestSysfsSeqlock", "./test/guest", "-test.skip=TestSysfsSeqlock"},
		{"Livepatch", "Consistency", "./test/e2e", "-test.run=Livepatch -test.skip=Consistency"},
	} {
		t.Setenv("KLP_KVM_NESTED_RUN", c.run)
		t.Setenv("KLP_KVM_NESTED_SKIP", c.skip)
		if got := strings.Join(runArgs(c.pkg), " "); got != c.want {
			t.Errorf("run %q skip %q %s: %q, want %q", c.run, c.skip, c.pkg, got, c.want)
		}
	}
}
