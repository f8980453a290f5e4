// Package nested is klp-kvm's real-KVM tier: its test runs the KVM-engine
// tests (kvm/hw, test/e2e, test/guest) on every KVM tier the machine has,
// one after the other, each named after the KVM flavour it ran on (the
// vendor module: kvm_intel, kvm_amd, kvm_pvm; see manifest.Flavour):
//
//   - direct: on the host's own /dev/kvm, when it can be opened
//     (TestNestedKVM/direct/kvm_pvm/kvm-hw/TestKVMKick, ...);
//   - nested: on Debian's kvm_amd inside QEMU. QEMU's TCG emulates AMD SVM,
//     so a stock Debian kernel booted under `qemu-system-x86_64 -accel tcg
//     -cpu max` has a working /dev/kvm once its kvm modules are loaded: the
//     code path of users with hardware virtualization, whatever the host
//     has (TestNestedKVM/nested/kvm_amd/test-e2e/TestBoot, ...).
//
// TestNestedKVM builds the test binaries statically (CGO_ENABLED=0 go test
// -c); the direct tier runs them on the host; the nested tier packs them
// with a small Go /init (vminit, which also reports the VM's KVM flavour)
// and the modules into an initramfs (package initramfs), boots it, streams
// the VM's console into the test log, and turns the in-VM results (package
// manifest's control lines on the VM's second serial port, test2json
// output) into one subtest per in-VM test. planTiers (tiers_test.go)
// decides which tiers run.
//
// The nested tier's prerequisites come from prepare.sh (QEMU and the Debian
// kernel, cached under ${XDG_CACHE_HOME:-~/.cache}/klp-kvm/nested). A tier
// that cannot run skips with one line; when neither can, the whole test
// does.
//
// Knobs (environment): KLP_KVM_NESTED_REQUIRE=1 (CI, after prepare.sh)
// turns a missing nested prerequisite, or a /dev/kvm that exists but cannot
// be opened, into a failure; KLP_KVM_NESTED=0 skips both tiers;
// KLP_KVM_NESTED_DIRECT=0 runs the nested tier only, =1 the direct tier
// only (even without a usable /dev/kvm); KLP_KVM_NESTED_PARALLEL=1 runs the
// two tiers at the same time; KLP_KVM_NESTED_RUN is passed to every binary
// as -test.run, KLP_KVM_NESTED_SKIP as -test.skip, KLP_KVM_NESTED_COUNT as -test.count; KLP_KVM_NESTED_TIMEOUT (a Go duration, default 8m) bounds
// the whole VM run, KLP_KVM_NESTED_BIN_TIMEOUT (default 5m; 12m, and 14m for the run, in the VM of test/linux) each test binary in it; KLP_KVM_NESTED_CACHE overrides the cache directory;
// KLP_KVM_NESTED_PKGS="./kvm/hw ..." replaces the package list;
// KLP_KVM_NESTED_CPU sets QEMU's -cpu (default max), KLP_KVM_NESTED_ACCEL
// its -accel (default tcg,thread=single). KLP_E2E_* variables reach the
// binaries of both tiers.
package nested
