//go:build unix && !linux

package sockio

import (
	"syscall"
	"unsafe"
)

// Elsewhere the reads and writes go through the syscall package.

func Read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errnoOf(err)
}

func Write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errnoOf(err)
}

// Writev writes the first buffer only; callers loop over partial writes.
func Writev(fd uintptr, iov []syscall.Iovec) (int, syscall.Errno) {
	return Write(fd, unsafe.Slice(iov[0].Base, iov[0].Len))
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}
