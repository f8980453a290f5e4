// Package nested is klp-kvm's nested KVM tier: its test runs the
// KVM-engine tests on real KVM on machines without /dev/kvm.
//
// QEMU's TCG emulates AMD SVM, so a stock Debian kernel booted under
// `qemu-system-x86_64 -accel tcg -cpu max` has a working /dev/kvm once its
// kvm modules are loaded. TestNestedKVM builds the test binaries statically
// (CGO_ENABLED=0 go test -c), packs them with a small Go /init (vminit) and
// the modules into an initramfs (package initramfs), boots it, streams the
// VM's console into the test log, and turns the in-VM results (package
// manifest's control lines on the VM's second serial port, test2json
// output) into one subtest per in-VM test.
//
// Prerequisites come from prepare.sh (QEMU and the Debian kernel, cached
// under ${XDG_CACHE_HOME:-~/.cache}/klp-kvm/nested). Without them and
// without /dev/kvm the test skips with one line; with /dev/kvm it runs the
// same binaries directly on the host instead.
//
// Knobs (environment): KLP_KVM_NESTED_REQUIRE=1 (CI) turns every skip into
// a failure; KLP_KVM_NESTED=0 skips the tier; KLP_KVM_NESTED_RUN
// is passed to every binary as -test.run; KLP_KVM_NESTED_TIMEOUT (a Go
// duration, default 8m) bounds the whole VM run; KLP_KVM_NESTED_CACHE
// overrides the cache directory; KLP_KVM_NESTED_DIRECT=0 forces the VM even
// where /dev/kvm exists, =1 runs directly on the host whatever it has;
// KLP_KVM_NESTED_PKGS="./kvm/hw ..." replaces the package list;
// KLP_KVM_NESTED_CPU sets QEMU's -cpu (default max), KLP_KVM_NESTED_ACCEL
// its -accel (default tcg,thread=single).
package nested
