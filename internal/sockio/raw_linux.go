package sockio

import "syscall"

// Readv reads into the buffers of iov in order, waiting until there is something;
// io.EOF at the end of the stream.
func (r Raw) Readv(iov []syscall.Iovec) (int, error) {
	op := readvOp{iov: iov}
	err := r.rc.Read(op.try)
	return readResult("readv", op.n, op.errno, err)
}

type readvOp struct {
	iov   []syscall.Iovec
	n     int
	errno syscall.Errno
}

func (o *readvOp) try(fd uintptr) bool {
	o.n, o.errno = Readv(fd, o.iov)
	return o.errno != syscall.EAGAIN
}
