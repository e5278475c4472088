//go:build unix

package hbone

import (
	"io"
	"net"
	"os"
	"syscall"
)

// sockIO returns what the record layer reads from and writes to: nc itself, or for a
// socket its descriptor through RawConn (which keeps the descriptor's locks, deadlines
// and Close semantics) with the package's own system calls.
func sockIO(nc net.Conn) io.ReadWriter {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	return rawSock{rc}
}

type rawSock struct{ rc syscall.RawConn }

func (s rawSock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var (
		n     int
		errno syscall.Errno
	)
	err := s.rc.Read(func(fd uintptr) bool {
		n, errno = sysRead(fd, p)
		return errno != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s rawSock) Write(p []byte) (int, error) { return s.writePair(p, nil) }

// WritePair writes a then b, in one writev where the socket takes them at once.
func (s rawSock) WritePair(a, b []byte) (int, error) { return s.writePair(a, b) }

func (s rawSock) writePair(a, b []byte) (int, error) {
	var (
		done  int
		errno syscall.Errno
	)
	total := len(a) + len(b)
	err := s.rc.Write(func(fd uintptr) bool {
		for done < total {
			var (
				n int
				e syscall.Errno
			)
			switch {
			case done >= len(a):
				n, e = sysWrite(fd, b[done-len(a):])
			case len(b) == 0:
				n, e = sysWrite(fd, a[done:])
			default:
				var iov [2]syscall.Iovec
				iov[0].Base, iov[1].Base = &a[done], &b[0]
				iov[0].SetLen(len(a) - done)
				iov[1].SetLen(len(b))
				n, e = sysWritev(fd, iov[:])
			}
			if e == syscall.EAGAIN {
				return false // wait until writable
			}
			if e != 0 {
				errno = e
				return true
			}
			done += n
		}
		return true
	})
	switch {
	case err != nil:
		return done, err
	case errno != 0:
		return done, os.NewSyscallError("write", errno)
	}
	return done, nil
}
