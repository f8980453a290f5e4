package vmm

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"klp-kvm/api"
)

// Handler is the control API over this guest: every route of api.Routes.
// Routes that need the guest agent (the /guest routes, and the patch
// operations, whose callbacks and sysfs state need a booted guest) wait
// until the agent has answered its handshake, so no request is lost to a
// guest that is still booting; the machine and status routes answer at
// once, from the first instant.
func (v *VMM) Handler() http.Handler {
	routes := http.NewServeMux()
	api.MachineRoutes(routes, v.Machine)
	if v.Machine.IsLinux() {
		// a Linux guest's livepatch tree is its agent's (sysfs.go)
		api.GuestRoutes(routes, linuxAgent{Agent: v.Agent, v: v})
	} else {
		api.GuestRoutes(routes, v.Agent)
	}
	api.KernelRoutes(routes, v.Kernel)
	switch {
	case v.Manager != nil:
		api.LivepatchRoutes(routes, v.Manager, v.Machine)
	case v.Linux != nil:
		api.LivepatchRoutes(routes, linuxPatcher{Manager: v.Linux, tree: v.tree}, v.Machine)
	default:
		// A guest without live patching (a Linux guest, a kernel without
		// klp_guest_abi) answers the patch routes with why, not a 404.
		for _, r := range api.Routes {
			if strings.HasPrefix(r.Pattern, "/patches") {
				routes.HandleFunc(r.String(), func(w http.ResponseWriter, _ *http.Request) {
					api.WriteError(w, http.StatusNotImplemented, "EOPNOTSUPP", v.NoLivepatch)
				})
			}
		}
	}
	mux := http.NewServeMux()
	gated := v.gate(routes)
	for _, r := range api.Routes {
		if needsGuest(r) {
			mux.Handle(r.String(), gated)
		}
	}
	mux.Handle("/", routes) // the rest, and the 404/405 answers
	return mux
}

// needsGuest reports whether route r talks to the running guest.
func needsGuest(r api.Route) bool {
	return strings.HasPrefix(r.Pattern, "/guest/") || (r.Method == http.MethodPost && strings.HasPrefix(r.Pattern, "/patches"))
}

// gate holds a request until the guest agent is ready. A guest that stops
// first is a 502 naming how it stopped; one still booting when the boot
// timeout or the request's own context ends is a 503.
func (v *VMM) gate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-v.ready:
			next.ServeHTTP(w, r)
			return
		default:
		}
		if !v.started.Load() {
			api.WriteError(w, http.StatusServiceUnavailable, "EAGAIN", fmt.Errorf("guest not started"))
			return
		}
		limit := time.NewTimer(time.Until(v.t0.Add(v.cfg.BootTimeout)))
		defer limit.Stop()
		select {
		case <-v.ready:
			next.ServeHTTP(w, r)
		case <-v.stopped:
			api.WriteError(w, http.StatusBadGateway, "EHOSTDOWN", fmt.Errorf("guest stopped before its agent answered: %v", v.stopError()))
		case <-limit.C:
			api.WriteError(w, http.StatusServiceUnavailable, "EAGAIN", fmt.Errorf("guest agent has not answered %v after start", v.cfg.BootTimeout))
		case <-r.Context().Done():
			api.WriteError(w, http.StatusServiceUnavailable, "EAGAIN", fmt.Errorf("guest agent not ready yet: %v", r.Context().Err()))
		}
	})
}
