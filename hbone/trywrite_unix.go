//go:build unix

package hbone

import (
	"errors"
	"syscall"
)

func rawTryWriterFor(rc syscall.RawConn) TryWriter { return rawTryWriter{rc} }

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
		var e syscall.Errno
		n, e = sysWrite(fd, p)
		if e != 0 {
			werr = e
		}
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
