package agent

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"klp-kvm/internal/poll"
)

// TestRequestsInFlightTogether: a request whose reply is held back (a
// guest-exec blocked on the host, as a sysfs write of a callbacks patch
// is) must not stop another request (the guest-call of a callback) from
// being sent and answered; the held reply then reaches its own caller.
func TestRequestsInFlightTogether(t *testing.T) {
	var mu sync.Mutex
	var held map[string]any
	_, host := newFake(t, func(req map[string]any, w io.Writer) {
		switch req["execute"] {
		case "guest-exec":
			mu.Lock()
			held = req // answered after the guest-call
			mu.Unlock()
		case "guest-call":
			sendReturn(w, req, `{"value":7}`)
			mu.Lock()
			h := held
			mu.Unlock()
			if h != nil {
				sendReturn(w, h, `{"output":"done\n","status":0}`)
			}
		}
	})
	c := New(host, Options{Timeout: 5 * time.Second})
	defer c.Close()
	execDone := make(chan error, 1)
	var res ExecResult
	go func() {
		var err error
		res, err = c.Exec(context.Background(), "echo 1 > /sys/kernel/livepatch/p/enabled")
		execDone <- err
	}()
	// The exec is in flight (held) before the call goes out.
	poll.Until(t, "the exec request to reach the guest", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return held != nil
	})
	v, err := c.GuestCall(context.Background(), 0xffffffffa0000000, 1)
	if err != nil || v != 7 {
		t.Fatalf("guest-call while an exec is in flight: %d, %v", v, err)
	}
	if err := <-execDone; err != nil || res.Output != "done\n" {
		t.Fatalf("exec: %+v, %v", res, err)
	}
	if st := c.Stats(); st.Unmatched != 0 || st.Requests != 2 || st.Replies != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestLateReplyToAbandonedRequest: a reply that comes after its caller
// gave up is counted as unmatched and never given to a later request.
func TestLateReplyToAbandonedRequest(t *testing.T) {
	var mu sync.Mutex
	var first map[string]any
	_, host := newFake(t, func(req map[string]any, w io.Writer) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = req // never answered in time
			return
		}
		sendReturn(w, first, `{"output":"stale\n","status":0}`)
		sendReturn(w, req, `{"output":"fresh\n","status":0}`)
	})
	c := New(host, Options{})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := c.Exec(ctx, "first")
	cancel()
	if err == nil {
		t.Fatal("an unanswered request succeeded")
	}
	r, err := c.Exec(context.Background(), "second")
	if err != nil || r.Output != "fresh\n" {
		t.Fatalf("second request got %+v, %v", r, err)
	}
	if st := c.Stats(); st.Unmatched != 1 {
		t.Fatalf("unmatched %d, want 1", st.Unmatched)
	}
}
