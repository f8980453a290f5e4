package api

// For the external tests (package api_test): internals they check.

// SetAllow replaces l's peer-credential rule (a test runs as one uid).
func SetAllow(l *Listener, allow func(uid uint32) bool) { l.allow = allow }

// OpenConns is how many connections l has open (its MaxConns tokens).
func OpenConns(l *Listener) int { return len(l.conns) }

// Clip is clip, for messages in tests.
var Clip = clip
