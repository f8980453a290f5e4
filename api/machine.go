package api

import (
	"net/http"

	"klp-kvm/kvm"
)

// MachineRoutes registers the machine routes on mux:
//
//	GET  /machine          kvm.Info (engine, vCPUs and states, uptime, counters)
//	POST /machine/pause    pause every vCPU (nests)
//	POST /machine/resume   undo one pause
//	POST /machine/stop     stop the machine; `klp-kvm run` then exits
func MachineRoutes(mux *http.ServeMux, m *kvm.Machine) {
	mux.HandleFunc(RouteMachine.String(), func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, m.Info())
	})
	mux.HandleFunc(RouteMachinePause.String(), func(w http.ResponseWriter, r *http.Request) {
		if err := m.Pause(); err != nil {
			WriteError(w, http.StatusConflict, "EBUSY", err)
			return
		}
		WriteJSON(w, http.StatusOK, m.Info())
	})
	mux.HandleFunc(RouteMachineResume.String(), func(w http.ResponseWriter, r *http.Request) {
		if err := m.Resume(); err != nil {
			WriteError(w, http.StatusConflict, "EINVAL", err)
			return
		}
		WriteJSON(w, http.StatusOK, m.Info())
	})
	mux.HandleFunc(RouteMachineStop.String(), func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, struct{}{})
		m.Stop()
	})
}
