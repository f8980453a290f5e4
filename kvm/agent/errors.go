package agent

import (
	"errors"
	"fmt"
)

// Error is the one error type of package agent.
type Error struct {
	Op        string // the command ("guest-exec") or client operation ("read")
	Kind      error  // one of the Err* sentinels, checkable with errors.Is
	Class     string // for ErrGuest: the agent's error class ("GenericError", "CommandNotFound")
	Desc      string // for ErrGuest: the agent's description; otherwise detail
	Errno     int    // for ErrGuest: Linux errno the guest reported, 0 if none
	ErrnoName string // for ErrGuest: its name ("EBUSY"), if the guest sent one
	Err       error  // underlying error, if any
}

// Kinds of Error.
var (
	ErrTimeout  = errors.New("timed out")                  // no answer in time
	ErrClosed   = errors.New("agent channel closed")       // the byte stream ended or Close was called
	ErrGuest    = errors.New("guest agent returned error") // {"error":...} from the guest
	ErrProtocol = errors.New("protocol error")             // a reply that does not parse as expected
	ErrTooLarge = errors.New("request too large")          // refused before sending
	ErrInvalid  = errors.New("invalid argument")           // bad arguments from the caller
)

func (e *Error) Error() string {
	s := "agent: " + e.Op + ": " + e.Kind.Error()
	if e.Class != "" {
		s += ": " + e.Class
	}
	if e.Desc != "" {
		s += ": " + e.Desc
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is matches the Kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Desc: fmt.Sprintf(format, args...)}
}
