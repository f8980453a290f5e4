// Package linux holds the end-to-end tests of Linux guests: an unmodified
// x86-64 Linux bzImage (Debian 12's, the kernel the nested tier itself
// boots) booted by kvm.Machine through Linux's 64-bit boot protocol.
//
// The kernel comes from $KLP_E2E_LINUX_KERNEL (test/nested sets it in both
// tiers); without it the tests skip. The guest's userland is this test
// binary itself: it is static (the tiers build with CGO_ENABLED=0), so the
// tests pack os.Executable() as /init of a small initramfs, and TestMain
// acts as that init when it runs as PID 1 (guestInit): it reports what the
// guest sees on the console and reboots, which stops the machine.
package linux
