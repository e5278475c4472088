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
	return tryResult(n, err, werr)
}

// TryWriteBuffers makes one writev(2) of bufs (at most maxGather of them), the way
// TryWrite makes one write(2).
func (t rawTryWriter) TryWriteBuffers(bufs [][]byte) (int, error) {
	var (
		iov  [maxGather]syscall.Iovec
		k    int
		n    int
		werr error
	)
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if k == len(iov) {
			break
		}
		iov[k].Base = &b[0]
		iov[k].SetLen(len(b))
		k++
	}
	if k == 0 {
		return 0, nil
	}
	err := t.rc.Write(func(fd uintptr) bool {
		var e syscall.Errno
		n, e = sysWritev(fd, iov[:k])
		if e != 0 {
			werr = e
		}
		return true
	})
	return tryResult(n, err, werr)
}

// tryResult turns a non-blocking write's outcome into TryWriter's: a full destination
// (EAGAIN) is a short write, not an error.
func tryResult(n int, err, werr error) (int, error) {
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
