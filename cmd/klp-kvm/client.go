package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"klp-kvm/api"
)

// call does one API request and maps the outcome to an exit status: 0 ok,
// 1 refused or unreachable (message on stderr names the errno).
func call(stderr io.Writer, sock, method, path string, in, out any) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := api.NewClient(api.SocketPath(sock)).Do(ctx, method, path, in, out)
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
