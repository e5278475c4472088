package sockio

import (
	"syscall"
	"unsafe"
)

// Each wrapper converts its pointers in the syscall.RawSyscall call itself, the one
// place where the compiler keeps what they point to alive and in place.

func Read(fd uintptr, p []byte) (int, syscall.Errno) {
	return rawIO(syscall.SYS_READ, fd, unsafe.Pointer(unsafe.SliceData(p)), len(p))
}

func Write(fd uintptr, p []byte) (int, syscall.Errno) {
	return rawIO(syscall.SYS_WRITE, fd, unsafe.Pointer(unsafe.SliceData(p)), len(p))
}

func Readv(fd uintptr, iov []syscall.Iovec) (int, syscall.Errno) {
	return rawIO(syscall.SYS_READV, fd, unsafe.Pointer(unsafe.SliceData(iov)), len(iov))
}

func Writev(fd uintptr, iov []syscall.Iovec) (int, syscall.Errno) {
	return rawIO(syscall.SYS_WRITEV, fd, unsafe.Pointer(unsafe.SliceData(iov)), len(iov))
}

// rawIO makes a read or write, again when a signal interrupted it.
func rawIO(trap, fd uintptr, p unsafe.Pointer, n int) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(trap, fd, uintptr(p), uintptr(n))
		if e == 0 {
			return int(r), 0
		}
		if e != syscall.EINTR {
			return 0, e
		}
	}
}

// The set-up calls of redirect's socket stack, for IPv4 TCP sockets. A non-blocking
// socket's accept4 and connect may meet a signal; the others do not wait.

// Socket makes a socket.
func Socket(domain, typ, proto int) (uintptr, syscall.Errno) {
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(domain), uintptr(typ), uintptr(proto))
	return fd, e
}

func Bind4(fd uintptr, sa *syscall.RawSockaddrInet4) syscall.Errno {
	_, _, e := syscall.RawSyscall(syscall.SYS_BIND, fd, uintptr(unsafe.Pointer(sa)), unsafe.Sizeof(*sa))
	return e
}

// Connect4 starts a connect; on a non-blocking socket EINPROGRESS means under way (and
// EINTR too: the connect goes on).
func Connect4(fd uintptr, sa *syscall.RawSockaddrInet4) syscall.Errno {
	_, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, fd, uintptr(unsafe.Pointer(sa)), unsafe.Sizeof(*sa))
	return e
}

func Listen(fd uintptr, backlog int) syscall.Errno {
	_, _, e := syscall.RawSyscall(syscall.SYS_LISTEN, fd, uintptr(backlog), 0)
	return e
}

// Accept4 accepts a connection with flags (SOCK_NONBLOCK and such), again when a signal
// interrupted it; rsa gets the peer's address.
func Accept4(fd uintptr, rsa *syscall.RawSockaddrAny, flags int) (uintptr, syscall.Errno) {
	for {
		n := uint32(unsafe.Sizeof(*rsa))
		nfd, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(rsa)), uintptr(unsafe.Pointer(&n)), uintptr(flags), 0, 0)
		if e != syscall.EINTR {
			return nfd, e
		}
	}
}

func Getsockname(fd uintptr, rsa *syscall.RawSockaddrAny) syscall.Errno {
	n := uint32(unsafe.Sizeof(*rsa))
	_, _, e := syscall.RawSyscall(syscall.SYS_GETSOCKNAME, fd, uintptr(unsafe.Pointer(rsa)), uintptr(unsafe.Pointer(&n)))
	return e
}

func Getpeername(fd uintptr, rsa *syscall.RawSockaddrAny) syscall.Errno {
	n := uint32(unsafe.Sizeof(*rsa))
	_, _, e := syscall.RawSyscall(syscall.SYS_GETPEERNAME, fd, uintptr(unsafe.Pointer(rsa)), uintptr(unsafe.Pointer(&n)))
	return e
}

func GetsockoptInt(fd uintptr, level, opt int) (int, syscall.Errno) {
	var v int32
	n := uint32(unsafe.Sizeof(v))
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&n)), 0)
	return int(v), e
}

func SetsockoptInt(fd uintptr, level, opt, v int) syscall.Errno {
	iv := int32(v)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&iv)), unsafe.Sizeof(iv), 0)
	return e
}

func SetsockoptLinger(fd uintptr, l *syscall.Linger) syscall.Errno {
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, syscall.SOL_SOCKET, syscall.SO_LINGER, uintptr(unsafe.Pointer(l)), unsafe.Sizeof(*l), 0)
	return e
}

func Shutdown(fd uintptr, how int) syscall.Errno {
	_, _, e := syscall.RawSyscall(syscall.SYS_SHUTDOWN, fd, uintptr(how), 0)
	return e
}

// DupCloexec duplicates fd (close-on-exec).
func DupCloexec(fd uintptr) (uintptr, syscall.Errno) {
	nfd, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
	return nfd, e
}

// Close closes fd, once: Linux releases the descriptor even when close reports EINTR,
// and a second close could hit a descriptor opened meanwhile.
func Close(fd uintptr) syscall.Errno {
	_, _, e := syscall.RawSyscall(syscall.SYS_CLOSE, fd, 0, 0)
	return e
}
