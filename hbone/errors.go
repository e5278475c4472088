package hbone

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors shared by both ends. A server handler returns or wraps them
// and maps them to a status with StatusFor; a client receives a *StatusError
// that matches them with errors.Is.
var (
	ErrBadRequest = errors.New("bad request")          // 400
	ErrDenied     = errors.New("denied by policy")     // 401
	ErrUpstream   = errors.New("upstream unavailable") // 503
)

// Internal errors.
var (
	errStreamReset   = errors.New("hbone: stream reset by peer")
	errConnClosed    = errors.New("hbone: connection closed")
	errPingTimeout   = errors.New("hbone: ping timeout")
	errGoAway        = errors.New("hbone: connection going away")
	errRefused       = errors.New("hbone: stream refused")
	errNotAccepted   = errors.New("hbone: stream not accepted")
	errAlreadyAnswer = errors.New("hbone: stream already answered")
	errWriteClosed   = errors.New("hbone: write side closed")
)

// StatusError is the client-side error for a non-200 response to CONNECT.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	return fmt.Sprintf("hbone: status %d: %s", e.Code, msg)
}

// Is reports whether target is the sentinel that corresponds to e.Code.
func (e *StatusError) Is(target error) bool {
	switch target {
	case ErrBadRequest:
		return e.Code == http.StatusBadRequest
	case ErrDenied:
		return e.Code == http.StatusUnauthorized
	case ErrUpstream:
		return e.Code == http.StatusServiceUnavailable
	}
	return false
}

// StatusFor maps an error to the HTTP status a server answers with:
// ErrBadRequest 400, ErrDenied 401, everything else 503. A *StatusError keeps
// its own code.
func StatusFor(err error) int {
	var se *StatusError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &se):
		return se.Code
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrDenied):
		return http.StatusUnauthorized
	default:
		return http.StatusServiceUnavailable
	}
}

// resetError is returned by stream operations after the peer reset the stream.
type resetError struct{ code uint32 }

func (e resetError) Error() string {
	return fmt.Sprintf("hbone: stream reset by peer (code %d)", e.code)
}
func (e resetError) Is(target error) bool { return target == errStreamReset }
