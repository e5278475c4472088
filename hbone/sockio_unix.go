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

// WritePair writes a then b, in one writev where the socket takes them at once.
func (s rawSock) WritePair(a, b []byte) (int, error) {
	var (
		done  int
		errno syscall.Errno
	)
	total := len(a) + len(b)
	err := s.rc.Write(func(fd uintptr) bool {
		for done < total {
			var iov [2]syscall.Iovec
			k := 0
			if done < len(a) {
				iov[k].Base = &a[done]
				iov[k].SetLen(len(a) - done)
				k++
			}
			if off := max(done-len(a), 0); off < len(b) {
				iov[k].Base = &b[off]
				iov[k].SetLen(len(b) - off)
				k++
			}
			n, e := sysWritev(fd, iov[:k])
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
		return done, os.NewSyscallError("writev", errno)
	}
	return done, nil
}
