package rpc

import (
	"errors"
	"fmt"
)

// Errors a caller can test for with errors.Is. Every error Call returns
// wraps exactly one of them.
var (
	// ErrUnreachable: no connection to the peer, or it closed.
	ErrUnreachable = errors.New("rpc: peer unreachable")
	// ErrTimeout: the caller's deadline passed, or the remote handler's.
	ErrTimeout = errors.New("rpc: timed out")
	// ErrRefused: the peer does not serve this protocol, or refused the
	// request (for example its queue was full).
	ErrRefused = errors.New("rpc: refused")
	// ErrTooLarge: the request or the response exceeds MaxMessageSize.
	ErrTooLarge = errors.New("rpc: message too large")
	// ErrHandler: the remote handler returned an error; its text follows.
	ErrHandler = errors.New("rpc: remote handler failed")
	// ErrProtocol: the peer broke the framing.
	ErrProtocol = errors.New("rpc: protocol violation")
)

// Error is what Call returns: a kind (one of the Err values above), what
// was going on, and the cause underneath, if any.
type Error struct {
	Kind   error  // one of ErrUnreachable, ErrTimeout, ...
	Detail string // remote error text or local context
	Cause  error  // the underlying error (QUIC, context), may be nil
}

func (e *Error) Error() string {
	s := e.Kind.Error()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Cause != nil {
		s += fmt.Sprintf(" (%v)", e.Cause)
	}
	return s
}

// Unwrap lets errors.Is match both the kind and the cause (for example
// context.DeadlineExceeded).
func (e *Error) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Cause}
}

func newErr(kind error, detail string, cause error) *Error {
	return &Error{Kind: kind, Detail: detail, Cause: cause}
}

// RefuseError is returned by a handler to answer StatusRefused instead of
// StatusHandlerError (for example a full queue).
func RefuseError(reason string) error { return newErr(ErrRefused, reason, nil) }
