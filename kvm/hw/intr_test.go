package hw

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRetryIntr(t *testing.T) {
	calls := 0
	r, err := retryIntr(func() (int, error) {
		calls++
		if calls < 3 {
			return 0, unix.EINTR
		}
		return 7, nil
	})
	if r != 7 || err != nil || calls != 3 {
		t.Fatalf("got %d, %v after %d calls; want 7, nil after 3", r, err, calls)
	}
	// Other errors are returned at once.
	calls = 0
	if err := retryIntr0(func() error { calls++; return unix.EBUSY }); !errors.Is(err, unix.EBUSY) || calls != 1 {
		t.Fatalf("got %v after %d calls; want EBUSY after 1", err, calls)
	}
	// A signal storm ends: EINTR comes back after maxIntrRetries+1 tries.
	calls = 0
	if err := retryIntr0(func() error { calls++; return unix.EINTR }); !errors.Is(err, unix.EINTR) || calls != maxIntrRetries+1 {
		t.Fatalf("got %v after %d calls; want EINTR after %d", err, calls, maxIntrRetries+1)
	}
}
