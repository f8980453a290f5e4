package hw

import (
	"errors"

	"golang.org/x/sys/unix"
)

// maxIntrRetries bounds how often a setup or state ioctl is reissued after
// EINTR. The Go runtime signals its threads (SIGURG for preemption, the
// profiler's SIGPROF), and KVM answers some ioctls with -EINTR when a signal
// is pending while it waits on a lock or allocates: KVM_CREATE_VM did so in
// the nested tier (kvm_amd under QEMU TCG). Those ioctls changed nothing and
// are safe to reissue. KVM_RUN is never retried here: its EINTR is our
// pause point (runIoctl).
const maxIntrRetries = 100

// retryIntr calls f until it returns something other than EINTR, at most
// maxIntrRetries+1 times, and returns its last result.
func retryIntr[T any](f func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		r, err := f()
		if i == maxIntrRetries || !errors.Is(err, unix.EINTR) {
			return r, err
		}
	}
}

// retryIntr0 is retryIntr for calls that return only an error.
func retryIntr0(f func() error) error {
	_, err := retryIntr(func() (struct{}, error) { return struct{}{}, f() })
	return err
}
