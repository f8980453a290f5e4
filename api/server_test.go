package api_test

import (
	"klp-kvm/api"
	"klp-kvm/api/apitest"

	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// serveFakeUnix serves the fake API with api.NewServer on a fresh socket;
// tune may shorten the server's timeouts before it starts.
func serveFakeUnix(t *testing.T, tune func(*http.Server)) (*apitest.API, *api.Listener, *api.Client) {
	t.Helper()
	f := apitest.NewAPI(t)
	l, err := api.Listen(filepath.Join(t.TempDir(), "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.Logf = t.Logf
	srv := api.NewServer(f.Mux)
	if tune != nil {
		tune(srv)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f, l, api.NewClient(l.Path())
}

func dialRaw(t *testing.T, l *api.Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readAllUntil reads c to its end (or the deadline) and returns what came.
func readAllUntil(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

// Half-sent requests (headers cut short, or a body cut short) are closed
// once the server's timeouts pass, and give back their connection slots;
// an operation that outlasts ReadTimeout is not cut short by it.
func TestServerTimeouts(t *testing.T) {
	const hdrTimeout, readTimeout = 200 * time.Millisecond, 400 * time.Millisecond
	f, l, c := serveFakeUnix(t, func(s *http.Server) {
		s.ReadHeaderTimeout, s.ReadTimeout = hdrTimeout, readTimeout
	})
	const n = 20
	start := time.Now()
	var conns []net.Conn
	for i := 0; i < n; i++ {
		hc := dialRaw(t, l) // headers never finished
		fmt.Fprint(hc, "POST /guest/exec HTTP/1.1\r\nHost: klp\r\nContent-Len")
		bc := dialRaw(t, l) // body never finished
		fmt.Fprint(bc, "POST /guest/exec HTTP/1.1\r\nHost: klp\r\nContent-Length: 1000\r\n\r\n{\"cmd\":\"")
		conns = append(conns, hc, bc)
	}
	var closed, timedOut408 atomic.Int32
	var wg sync.WaitGroup
	var latest atomic.Int64
	for _, hc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := readAllUntil(hc, 15*time.Second)
			if err == nil { // the server closed it
				closed.Add(1)
				if d := int64(time.Since(start)); d > latest.Load() {
					latest.Store(d)
				}
			}
			if bytes.Contains(b, []byte(" 408 ")) {
				timedOut408.Add(1)
			}
		}()
	}
	wg.Wait()
	if int(closed.Load()) != 2*n {
		t.Errorf("%d of %d half-sent requests closed by the server", closed.Load(), 2*n)
	}
	if d := time.Duration(latest.Load()); d < hdrTimeout || d > 10*time.Second {
		t.Errorf("last one closed after %v, want about %v..%v", d, hdrTimeout, readTimeout)
	}
	waitFor(t, func() bool { return api.OpenConns(l) == 0 })
	t.Logf("%d half-sent requests closed within %v (%d answered 408 first); connection slots all free", closed.Load(),
		time.Duration(latest.Load()).Round(time.Millisecond), timedOut408.Load())

	// A long operation: the read deadline is lifted once its body is in.
	f.Agent.Block, f.Agent.Started = make(chan struct{}), make(chan string, 1)
	go func() { <-f.Agent.Started; time.Sleep(3 * readTimeout); close(f.Agent.Block) }()
	if res, err := c.Exec(context.Background(), "sleep"); err != nil || res.Output != "ran sleep\n" {
		t.Errorf("exec outlasting ReadTimeout: %+v %v", res, err)
	}
}

// Connections beyond api.MaxConns are closed as soon as they are accepted,
// and counted; once the others go, the server serves again.
func TestServerMaxConns(t *testing.T) {
	_, l, c := serveFakeUnix(t, nil)
	var held []net.Conn
	for i := 0; i < api.MaxConns; i++ {
		held = append(held, dialRaw(t, l))
	}
	// The listener accepts in order: wait until every slot is taken.
	waitFor(t, func() bool { return api.OpenConns(l) == api.MaxConns })
	extra := dialRaw(t, l)
	fmt.Fprint(extra, "GET /machine HTTP/1.1\r\nHost: klp\r\n\r\n")
	if b, err := readAllUntil(extra, 10*time.Second); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || len(b) != 0 {
		t.Errorf("connection %d: %q %v, want closed unanswered", api.MaxConns+1, b, err)
	}
	if l.Refused() != 1 {
		t.Errorf("refused %d", l.Refused())
	}
	for _, h := range held {
		h.Close()
	}
	waitFor(t, func() bool { return api.OpenConns(l) == 0 })
	if _, err := c.Machine(context.Background()); err != nil {
		t.Errorf("after the flood: %v", err)
	}
}

// At most api.MaxConcurrent requests are served at once: one more is answered
// 503 EAGAIN at once.
func TestServerConcurrencyLimit(t *testing.T) {
	f, _, c := serveFakeUnix(t, nil)
	f.Agent.Block, f.Agent.Started = make(chan struct{}), make(chan string, api.MaxConcurrent)
	var wg sync.WaitGroup
	errs := make(chan error, api.MaxConcurrent)
	for i := 0; i < api.MaxConcurrent; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Exec(context.Background(), "x")
			errs <- err
		}()
	}
	for i := 0; i < api.MaxConcurrent; i++ {
		<-f.Agent.Started
	}
	_, err := c.Machine(context.Background())
	ae, ok := err.(*api.Error)
	if !ok || ae.Status != http.StatusServiceUnavailable || ae.Errno != syscall.EAGAIN {
		t.Errorf("request %d: %v, want 503 EAGAIN", api.MaxConcurrent+1, err)
	}
	close(f.Agent.Block)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if _, err := c.Machine(context.Background()); err != nil {
		t.Errorf("after: %v", err)
	}
}

// Parallel patch uploads: api.MaxConcurrentUploads are read, the others are
// refused (503) before their bodies are, and a declared length over the
// cap is refused (413) unread.
func TestServerUploadLimit(t *testing.T) {
	_, l, _ := serveFakeUnix(t, nil)
	const n = 12
	type reply struct {
		i    int
		line string
	}
	replies := make(chan reply, n)
	var conns []net.Conn
	for i := 0; i < n; i++ {
		hc := dialRaw(t, l)
		conns = append(conns, hc)
		fmt.Fprintf(hc, "POST /patches HTTP/1.1\r\nHost: klp\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"object\":\"", api.MaxPatchBody)
		go func(i int) {
			line, _ := bufio.NewReader(hc).ReadString('\n')
			replies <- reply{i, line}
		}(i)
	}
	refused := 0
	timeout := time.After(5 * time.Second)
	for refused < n-api.MaxConcurrentUploads {
		select {
		case r := <-replies:
			if !strings.Contains(r.line, " 503 ") {
				t.Fatalf("upload %d: %q", r.i, r.line)
			}
			refused++
		case <-timeout:
			t.Fatalf("%d of %d uploads refused in 5s, want %d", refused, n, n-api.MaxConcurrentUploads)
		}
	}
	select {
	case r := <-replies:
		t.Errorf("upload %d answered while its body is unsent: %q", r.i, r.line)
	case <-time.After(200 * time.Millisecond):
	}
	t.Logf("%d parallel uploads: %d being read, %d refused with 503 before their bodies", n, n-refused, refused)
	for _, c := range conns {
		c.Close()
	}
	big := dialRaw(t, l)
	fmt.Fprintf(big, "POST /patches HTTP/1.1\r\nHost: klp\r\nContent-Length: %d\r\n\r\n", api.MaxPatchBody+1)
	if line, _ := bufio.NewReader(big).ReadString('\n'); !strings.Contains(line, " 413 ") {
		t.Errorf("oversized upload: %q", line)
	}
}

// What N parallel full-size uploads cost the server: the heap's peak
// stays within a few bodies, whatever N (unbounded, it would be N).
func TestServerUploadMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("moves a few hundred MiB")
	}
	_, l, _ := serveFakeUnix(t, nil)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", l.Path())
	}}}
	// One body, shared by every client: the heap's growth is the server's.
	body, err := json.Marshal(api.PatchRequest{Op: "register", Object: bytes.Repeat([]byte{0x7f}, api.MaxPatchObject), Name: "junk.o"})
	if err != nil {
		t.Fatal(err)
	}
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	heap := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base := heap()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			if h := heap(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	const n = 24
	var wg sync.WaitGroup
	var served, busy atomic.Int32
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := hc.Post("http://klp/patches", "application/json", bytes.NewReader(body))
			if err != nil { // refused and closed while the body was on its way
				busy.Add(1)
				return
			}
			defer resp.Body.Close()
			var er api.ErrorReply
			json.NewDecoder(resp.Body).Decode(&er)
			switch {
			case resp.StatusCode == 400 && er.Errno == "EINVAL":
				served.Add(1)
			case resp.StatusCode == 503 && er.Errno == "EAGAIN":
				busy.Add(1)
			default:
				t.Errorf("upload: %d %+v", resp.StatusCode, er)
			}
		}()
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	grew := int64(peak.Load()) - int64(base)
	// Per upload the server holds its body, the JSON decoder's copy of
	// it and the decoded object: under 4 bodies; allow for one more
	// upload's garbage not yet collected. Unbounded, n uploads would take
	// n times that.
	bound := int64(api.MaxConcurrentUploads+2) * 4 * api.MaxPatchBody
	t.Logf("%d parallel uploads of %d MiB: %d decoded and refused as not ELF, %d refused busy; server heap peak +%d MiB (bound %d MiB)",
		n, api.MaxPatchObject>>20, served.Load(), busy.Load(), grew>>20, bound>>20)
	if served.Load() == 0 || grew > bound {
		t.Errorf("served %d, heap grew %d MiB, bound %d MiB", served.Load(), grew>>20, bound>>20)
	}
}

// The API behind another mux that holds requests (as the composition root
// holds the guest routes until the agent answers): a wait longer than
// ReadTimeout cancels nothing, with or without a body, and the inner
// mux's 404 and 405 still come out as JSON.
func TestHardenNestedAndWaiting(t *testing.T) {
	const readTimeout = 300 * time.Millisecond
	f := apitest.NewAPI(t)
	hold := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(3 * readTimeout)
			if err := r.Context().Err(); err != nil {
				api.WriteError(w, http.StatusServiceUnavailable, "EAGAIN", err)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	outer := http.NewServeMux()
	outer.Handle(api.RouteGuestInfo.String(), hold(f.Mux))
	outer.Handle(api.RouteGuestExec.String(), hold(f.Mux))
	outer.Handle("/", f.Mux)
	l, err := api.Listen(filepath.Join(t.TempDir(), "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(outer)
	srv.ReadTimeout = readTimeout
	go srv.Serve(l)
	defer srv.Close()
	c := api.NewClient(l.Path())
	ctx := context.Background()
	if _, err := c.GuestInfo(ctx); err != nil {
		t.Errorf("held GET: %v", err)
	}
	// A body larger than the server's read buffer: it is read from the
	// connection after the wait.
	long := strings.Repeat("x", 12<<10)
	if res, err := c.Exec(ctx, long); err != nil || res.Output != "ran "+long+"\n" {
		t.Errorf("held POST with a body: %v", err)
	}
	for _, c := range []struct {
		method, path string
		status       int
		errno        string
	}{
		{"GET", "/nosuch", 404, "ENOENT"},
		{"GET", "/guest/exec", 405, "EINVAL"},
		{"PUT", "/patches", 405, "EINVAL"},
	} {
		status, er, raw := serveFake(t, api.Harden(outer), c.method, c.path, nil)
		if status != c.status || er.Errno != c.errno || !json.Valid(raw) {
			t.Errorf("%s %s: %d %q", c.method, c.path, status, raw)
		}
	}
}
