package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"klp-kvm/api"
)

// call runs one API client method against the socket named by --api (sock)
// and maps the outcome to an exit status: 0 ok, 1 refused or unreachable
// (the message on stderr names the errno). The commands call typed client
// methods (api.Client) and never build a path themselves.
func call(stderr io.Writer, sock string, f func(ctx context.Context, c *api.Client) error) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := f(ctx, api.NewClient(api.SocketPath(sock)))
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "klp-kvm: %v\n", err)
	return 1
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}
