package api

import (
	"fmt"
	"net/url"
	"strings"
)

// Route is one endpoint of the control API: an HTTP method and a path
// pattern in net/http.ServeMux syntax, whose {wildcards} are path segments.
// Every route is defined once, below; the server registers its handlers
// under these values and the Client builds its requests from them, so the
// two cannot drift apart and no caller writes a path by hand.
type Route struct {
	Method  string
	Pattern string
	// MaxBody caps the request body in bytes: the server answers 413
	// (EMSGSIZE) beyond it without reading on, and the client refuses to
	// send more.
	MaxBody int64
}

// The routes of the control API (docs/architecture.md, "Control API").
// Routes that take no body or an OpRequest are capped at MaxControlBody,
// the guest routes at MaxGuestBody, and the patch upload at MaxPatchBody.
var (
	RouteMachine        = Route{"GET", "/machine", MaxControlBody}                    // -> kvm.Info
	RouteMachinePause   = Route{"POST", "/machine/pause", MaxControlBody}             // -> kvm.Info
	RouteMachineResume  = Route{"POST", "/machine/resume", MaxControlBody}            // -> kvm.Info
	RouteMachineStop    = Route{"POST", "/machine/stop", MaxControlBody}              // -> {}
	RouteGuestInfo      = Route{"GET", "/guest/info", MaxControlBody}                 // -> agent.Info
	RouteGuestExec      = Route{"POST", "/guest/exec", MaxGuestBody}                  // ExecRequest -> agent.ExecResult
	RouteGuestFileRead  = Route{"POST", "/guest/file/read", MaxGuestBody}             // FileRequest -> FileReply
	RouteGuestFileWrite = Route{"POST", "/guest/file/write", MaxGuestBody}            // FileRequest -> {}
	RouteGuestSysfs     = Route{"GET", "/guest/sysfs", MaxControlBody}                // -> SysfsInfo
	RoutePatches        = Route{"GET", "/patches", MaxControlBody}                    // -> livepatch.Status
	RoutePatchAdd       = Route{"POST", "/patches", MaxPatchBody}                     // PatchRequest -> OpReply
	RoutePatchEnable    = Route{"POST", "/patches/{name}/enable", MaxControlBody}     // OpRequest (optional) -> OpReply
	RoutePatchDisable   = Route{"POST", "/patches/{name}/disable", MaxControlBody}    // OpRequest (optional) -> OpReply
	RoutePatchUnload    = Route{"POST", "/patches/{name}/unload", MaxControlBody}     // OpRequest (optional) -> OpReply
	RoutePatchUnreg     = Route{"POST", "/patches/{name}/unregister", MaxControlBody} // -> OpReply
	RouteStatus         = Route{"GET", "/status", MaxControlBody}                     // -> StatusReply
	RouteKernel         = Route{"POST", "/kernel", MaxGuestBody}                      // KernelRequest -> linuxkernel.Report
	routePatchUnknownOp = Route{"POST", "/patches/{name}/{op}", MaxControlBody}       // ENOENT naming the operation
)

// Routes lists every route a client can call, in the order of the table
// in docs/architecture.md.
var Routes = []Route{
	RouteMachine, RouteMachinePause, RouteMachineResume, RouteMachineStop,
	RouteGuestInfo, RouteGuestExec, RouteGuestFileRead, RouteGuestFileWrite, RouteGuestSysfs,
	RoutePatches, RoutePatchAdd, RoutePatchEnable, RoutePatchDisable, RoutePatchUnload, RoutePatchUnreg,
	RouteStatus, RouteKernel,
}

// String is the route as a ServeMux pattern: "POST /patches/{name}/enable".
func (r Route) String() string { return r.Method + " " + r.Pattern }

// Path is the request path for the route with its wildcards filled in from
// args, in order. Each argument becomes exactly one path segment: it is
// escaped with url.PathEscape (so "a/b" travels as "a%2Fb" and the server's
// PathValue gives back "a/b"), and an argument that cannot be one segment
// ("", ".", "..", which a ServeMux would clean away) is an error.
func (r Route) Path(args ...string) (string, error) {
	segs := strings.Split(r.Pattern, "/")
	n := 0
	for i, s := range segs {
		if !strings.HasPrefix(s, "{") {
			continue
		}
		if n == len(args) {
			return "", fmt.Errorf("%s: %d arguments, want more", r.Pattern, len(args))
		}
		a := args[n]
		n++
		if a == "" || a == "." || a == ".." {
			return "", fmt.Errorf("%s %q cannot be a path segment", strings.Trim(s, "{}"), a)
		}
		segs[i] = url.PathEscape(a)
	}
	if n != len(args) {
		return "", fmt.Errorf("%s: %d arguments, want %d", r.Pattern, len(args), n)
	}
	return strings.Join(segs, "/"), nil
}
