package vmm

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/kvm/agent"
)

// engine is emu unless KLP_KVM_ENGINE says otherwise: these tests are
// about the wiring, and emu runs everywhere; test/e2e runs the same wiring
// on every engine.
var engine = cmp.Or(os.Getenv("KLP_KVM_ENGINE"), "emu")

func do(t *testing.T, h http.Handler, r api.Route, body any) *httptest.ResponseRecorder {
	t.Helper()
	var b bytes.Buffer
	if body != nil {
		json.NewEncoder(&b).Encode(body)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(r.Method, r.Pattern, &b))
	return rec
}

func TestBootAndExec(t *testing.T) {
	v, err := Boot(Config{Engine: engine, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.BootTime() <= 0 {
		t.Fatalf("BootTime %v after Boot", v.BootTime())
	}
	if v.Manager == nil {
		t.Fatalf("no livepatch manager for the embedded kernel: %v", v.NoLivepatch)
	}
	out, err := v.Exec("echo hello")
	if err != nil || out != "hello\n" {
		t.Fatalf("exec: %q, %v", out, err)
	}
	if _, err := v.Exec("false"); err == nil {
		t.Fatal("a failing command gave no error")
	}
	if err := v.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// TestNoRequestLostAtStartup is the startup race of issue 12: a request
// sent the moment the guest starts must be answered, not lost to an agent
// that is not listening yet. Each round starts a fresh guest and sends at
// once.
func TestNoRequestLostAtStartup(t *testing.T) {
	const rounds = 4
	for i := 0; i < rounds; i++ {
		v, err := New(Config{Engine: engine, CPUs: 1})
		if err != nil {
			t.Fatal(err)
		}
		h := v.Handler()
		// Before Start: the guest routes refuse, the machine routes answer.
		if rec := do(t, h, api.RouteGuestInfo, nil); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "EAGAIN") {
			t.Fatalf("guest route before start: %d %s", rec.Code, rec.Body)
		}
		if rec := do(t, h, api.RouteMachine, nil); rec.Code != http.StatusOK {
			t.Fatalf("machine route before start: %d %s", rec.Code, rec.Body)
		}
		if err := v.Start(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		rec := do(t, h, api.RouteGuestExec, api.ExecRequest{Cmd: "echo up"})
		var res agent.ExecResult
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &res) != nil || res.Output != "up\n" {
			t.Fatalf("round %d: exec at start: %d %s", i, rec.Code, rec.Body)
		}
		t.Logf("round %d: answered %v after start; agent ready after %v", i, time.Since(t0).Round(time.Millisecond), v.BootTime().Round(time.Millisecond))
		v.Close()
	}
}

// TestGuestStoppedBeforeReady: a guest that stops before its agent
// answers fails WaitReady and every waiting request with how it stopped.
func TestGuestStoppedBeforeReady(t *testing.T) {
	v, err := New(Config{Engine: engine, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Start(); err != nil {
		t.Fatal(err)
	}
	v.Machine.Stop()
	<-v.Stopped()
	select {
	case <-v.Ready():
		t.Skip("the agent answered before the stop took effect")
	default:
	}
	if err := v.WaitReady(t.Context()); err == nil || !strings.Contains(err.Error(), "stopped while booting") {
		t.Fatalf("WaitReady: %v", err)
	}
	rec := do(t, v.Handler(), api.RouteGuestExec, api.ExecRequest{Cmd: "true"})
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "EHOSTDOWN") {
		t.Fatalf("request to a stopped guest: %d %s", rec.Code, rec.Body)
	}
	if err := v.Start(); err == nil {
		t.Fatal("a second Start succeeded")
	}
}

// BenchmarkBootToReady measures a guest's start to its agent's first
// answer: what `klp-kvm run` makes a first request wait.
func BenchmarkBootToReady(b *testing.B) {
	var total time.Duration
	for b.Loop() {
		v, err := Boot(Config{Engine: engine, CPUs: 1})
		if err != nil {
			b.Fatal(err)
		}
		total += v.BootTime()
		v.Close()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/ready")
}

// TestGuestStopReachesCallers: a request in flight when the guest stops
// fails at once, saying how the guest stopped and what it printed last,
// instead of a bare EOF or a timeout.
func TestGuestStopReachesCallers(t *testing.T) {
	v, err := Boot(Config{Engine: engine, CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	rec := do(t, v.Handler(), api.RouteGuestExec, api.ExecRequest{Cmd: "poweroff 7"})
	body := rec.Body.String()
	t.Logf("caller sees: %d %s", rec.Code, body)
	if rec.Code != http.StatusBadGateway || !strings.Contains(body, "code 7") || !strings.Contains(body, "last console lines") {
		t.Fatalf("exec poweroff: %d %s", rec.Code, body)
	}
	if code, _ := v.Wait(); code != 7 {
		t.Fatalf("power-off code %d", code)
	}
	// A request after the stop gets the same explanation.
	if _, err := v.Agent.Info(t.Context()); err == nil || !errors.Is(err, agent.ErrClosed) || !strings.Contains(err.Error(), "code 7") {
		t.Fatalf("request after the stop: %v", err)
	}
}

func TestSysfsBudget(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		want    time.Duration
	}{
		{"", 15 * time.Second},
		{"console=ttyS0", 15 * time.Second},
		{"klp.sysfs_timeout_ms=4000", 3 * time.Second},
		{"a klp.sysfs_timeout_ms=60000 b", 15 * time.Second}, // never above the default budget
		{"klp.sysfs_timeout_ms=0", 15 * time.Second},         // the guest ignores it too
		{"klp.sysfs_timeout_ms=x", 15 * time.Second},
	} {
		if got := sysfsBudget(c.cmdline); got != c.want {
			t.Errorf("%q: budget %v, want %v", c.cmdline, got, c.want)
		}
	}
}
