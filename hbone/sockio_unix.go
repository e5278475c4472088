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
	sc, ok := nc.(*net.TCPConn)
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

func (s rawSock) Write(p []byte) (int, error) {
	var (
		done  int
		errno syscall.Errno
	)
	err := s.rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			n, e := sysWrite(fd, p[done:])
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
