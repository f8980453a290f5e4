package agent

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"klp-kvm/klperr"
)

// Error is the one error type of package agent, by the convention of
// package klperr; Class and ErrnoName are what a guest error reply said.
type Error struct {
	Op        string        // the command ("guest-exec") or client operation ("read")
	Kind      error         // one of the Err* sentinels, checkable with errors.Is
	Errno     syscall.Errno // for ErrGuest: the Linux errno the guest reported, 0 if none
	Detail    string        // for ErrGuest: the agent's description; otherwise detail
	Err       error         // underlying error, if any
	Class     string        // for ErrGuest: the agent's error class ("GenericError", "CommandNotFound")
	ErrnoName string        // for ErrGuest: the errno's name as the guest sent it ("EBUSY")
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
	detail := e.Detail
	if e.Class != "" {
		detail = strings.TrimSuffix(e.Class+": "+detail, ": ")
	}
	return klperr.Format("agent", e.Op, "", e.Kind, e.Errno, detail, e.Err)
}

// Is matches the kind or the guest's errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the guest's errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}
