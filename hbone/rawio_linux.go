package hbone

import (
	"syscall"
	"unsafe"
)

// The data path's reads and writes go to non-blocking sockets, which never block, so
// they are made as raw system calls, without the runtime's entersyscall/exitsyscall.
// Besides that bookkeeping, this avoids a cost of bursty servers: the first system
// call a process makes after all its Ps went idle wakes the runtime's sysmon thread,
// which sleeps again 20 us later. A tunnel end sees several such bursts per
// connection, and on a 2-vCPU VM each wake-up of a sleeping thread is a cross-CPU
// interrupt (docs/performance.md).

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	return rawIO(syscall.SYS_READ, fd, unsafe.Pointer(unsafe.SliceData(p)), len(p))
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	return rawIO(syscall.SYS_WRITE, fd, unsafe.Pointer(unsafe.SliceData(p)), len(p))
}

func sysReadv(fd uintptr, iov []syscall.Iovec) (int, syscall.Errno) {
	return rawIO(syscall.SYS_READV, fd, unsafe.Pointer(unsafe.SliceData(iov)), len(iov))
}

func sysWritev(fd uintptr, iov []syscall.Iovec) (int, syscall.Errno) {
	return rawIO(syscall.SYS_WRITEV, fd, unsafe.Pointer(unsafe.SliceData(iov)), len(iov))
}

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
