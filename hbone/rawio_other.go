//go:build unix && !linux

package hbone

import (
	"syscall"
	"unsafe"
)

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return n, errnoOf(err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return n, errnoOf(err)
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

// sysWritev writes the first buffer only; the caller loops over partial writes.
func sysWritev(fd uintptr, iov []syscall.Iovec) (int, syscall.Errno) {
	return sysWrite(fd, unsafe.Slice(iov[0].Base, iov[0].Len))
}
