package api

import (
	"context"
	"fmt"
	"net/http"

	"klp-kvm/linuxkernel"
)

// KernelRequest is the body of POST /kernel: the functions whose fentry
// sites to check (none: only the kernel, its symbols and tasks).
type KernelRequest struct {
	Funcs []string `json:"funcs,omitempty"`
}

// Limits on a KernelRequest: Linux's KSYM_NAME_LEN is 512.
const (
	maxKernelFuncs   = 16 // 16 names of 512 bytes fit MaxGuestBody
	maxKernelFuncLen = 512
)

// KernelInspector is what POST /kernel needs: a live view of a Linux
// guest's kernel read from the host alone. *linuxkernel.Inspector over the
// VMM's machine is one.
type KernelInspector interface {
	InspectKernel(ctx context.Context, funcs []string) (*linuxkernel.Report, error)
}

// KernelRoutes registers the live-kernel route on mux:
//
//	POST /kernel   KernelRequest -> linuxkernel.Report
//
// It reads guest memory only (no guest agent): the kernel release, KASLR
// offset, symbol source and count, BTF types, the task list and the
// fentry sites of the named functions. Without a Linux guest (ki nil) it
// answers 404 ENOENT.
func KernelRoutes(mux *http.ServeMux, ki KernelInspector) {
	handle(mux, RouteKernel, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		var req KernelRequest
		if err := decodeJSON(body, &req); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		if err := checkFuncs(req.Funcs); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		if ki == nil {
			WriteError(w, http.StatusNotFound, "ENOENT", fmt.Errorf("this guest is not a Linux guest: no live kernel to inspect"))
			return
		}
		rep, err := ki.InspectKernel(r.Context(), req.Funcs)
		if err != nil {
			WriteError(w, http.StatusUnprocessableEntity, "EIO", err)
			return
		}
		WriteJSON(w, http.StatusOK, rep)
	})
}

func checkFuncs(funcs []string) error {
	if len(funcs) > maxKernelFuncs {
		return fmt.Errorf("%d functions, at most %d", len(funcs), maxKernelFuncs)
	}
	for _, f := range funcs {
		if f == "" || len(f) > maxKernelFuncLen {
			return fmt.Errorf("function name of %d bytes (1..%d)", len(f), maxKernelFuncLen)
		}
		for _, c := range []byte(f) {
			if !(c == '_' || c == '.' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				return fmt.Errorf("function name %q: byte %q is not in a kernel symbol", f, c)
			}
		}
	}
	return nil
}

// Kernel is POST /kernel: the live Linux guest kernel as the host reads
// it, with the fentry sites of funcs.
func (c *Client) Kernel(ctx context.Context, funcs []string) (*linuxkernel.Report, error) {
	var rep linuxkernel.Report
	if err := c.do(ctx, RouteKernel, nil, KernelRequest{Funcs: funcs}, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}
