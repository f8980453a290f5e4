// Package guest holds the end-to-end tests of the klp-kvm guest kernel:
// boots on a kvm.Machine (engine from KLP_KVM_ENGINE: emu by default, kvm
// or auto), the console shell, the agent, preemption, the self-test mode,
// host-side task enumeration and stack walks, the sysfs mirror and its
// write-back events, and malformed agent traffic.
//
// The tests live in _test files; this file only carries the package
// comment, so that go doc and go list see it.
package guest
