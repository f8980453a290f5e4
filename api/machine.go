package api

import (
	"net/http"

	"klp-kvm/kvm"
)

// Machine is what the machine routes need of the VMM; *kvm.Machine is
// one.
type Machine interface {
	Info() kvm.Info
	Pause() error
	Resume() error
	Stop()
}

// MachineRoutes registers the machine routes on mux:
//
//	GET  /machine          kvm.Info (engine, vCPUs and states, uptime, counters)
//	POST /machine/pause    pause every vCPU (nests)
//	POST /machine/resume   undo one pause
//	POST /machine/stop     stop the machine; `klp-kvm run` then exits
//
// None takes a body.
func MachineRoutes(mux *http.ServeMux, m Machine) {
	handle(mux, RouteMachine, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if noBody(w, body) {
			WriteJSON(w, http.StatusOK, infoJSON(m.Info()))
		}
	})
	handle(mux, RouteMachinePause, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !noBody(w, body) {
			return
		}
		if err := m.Pause(); err != nil {
			WriteError(w, http.StatusConflict, "EBUSY", err)
			return
		}
		WriteJSON(w, http.StatusOK, infoJSON(m.Info()))
	})
	handle(mux, RouteMachineResume, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !noBody(w, body) {
			return
		}
		if err := m.Resume(); err != nil {
			WriteError(w, http.StatusConflict, "EINVAL", err)
			return
		}
		WriteJSON(w, http.StatusOK, infoJSON(m.Info()))
	})
	handle(mux, RouteMachineStop, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !noBody(w, body) {
			return
		}
		WriteJSON(w, http.StatusOK, struct{}{})
		m.Stop()
	})
}

// infoJSON gives kvm.Info's lists as [] rather than null.
func infoJSON(in kvm.Info) kvm.Info {
	in.VCPUs = emptyList(in.VCPUs)
	return in
}
