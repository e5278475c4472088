package hbone

import (
	"errors"
	"io"
	"syscall"
)

// TryWriter is a destination the connection's read loop may hand received data to
// directly. TryWrite writes what the destination takes right now and never blocks:
// it returns n < len(p) and a nil error when the destination is full.
//
// Stream.WriteTo uses it: while WriteTo waits for data, the read loop writes each
// DATA payload straight to the destination instead of waking WriteTo's goroutine,
// which saves a goroutine hand-off per batch (on the receiving tunnel end of a bulk
// transfer, and twice on the critical path of every request/response). Whatever
// TryWrite does not take is left for WriteTo, which writes it blocking.
type TryWriter interface {
	TryWrite(p []byte) (n int, err error)
}

// NonBlocking returns a TryWriter for w when w is a socket (it implements
// syscall.Conn), and nil otherwise.
func NonBlocking(w io.Writer) TryWriter {
	if tw, ok := w.(TryWriter); ok {
		return tw
	}
	sc, ok := w.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rawTryWriter{rc}
}

type rawTryWriter struct{ rc syscall.RawConn }

// TryWrite makes one write(2) on the non-blocking descriptor. RawConn.Write takes
// the descriptor's write lock and honours its deadline and Close, so it cannot race
// with a blocking Write or outlive the socket.
func (t rawTryWriter) TryWrite(p []byte) (int, error) {
	var (
		n    int
		werr error
	)
	err := t.rc.Write(func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), p)
		return true // never wait for writability: that is WriteTo's job
	})
	if n < 0 {
		n = 0
	}
	if err != nil {
		return n, err
	}
	if errors.Is(werr, syscall.EAGAIN) || errors.Is(werr, syscall.EINTR) {
		werr = nil
	}
	return n, werr
}
