//go:build unix

package relay

import (
	"io"
	"syscall"
)

// testNonBlocking is what hbone.NonBlocking is to ztunnel: a TryWriter for a socket
// (the relay asks only for sockets), one write(2) that never waits.
func testNonBlocking(w io.Writer) TryWriter {
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

func (t rawTryWriter) TryWrite(p []byte) (int, error) {
	var (
		n     int
		errno error
	)
	if err := t.rc.Write(func(fd uintptr) bool {
		n, errno = syscall.Write(int(fd), p)
		return true // never wait
	}); err != nil {
		return 0, err
	}
	switch {
	case errno == syscall.EAGAIN:
		return 0, nil
	case errno != nil:
		return 0, errno
	}
	return n, nil
}
