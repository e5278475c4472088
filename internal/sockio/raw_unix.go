//go:build unix

package sockio

import (
	"io"
	"os"
	"syscall"
)

// ReadOp is one read(2) into P for a waiter that runs it until done, waiting for
// readability in between: syscall.RawConn.Read, or redirect's poller. Pass Try to the
// waiter, then Result the waiter's error:
//
//	op := sockio.ReadOp{P: p}
//	return op.Result(rc.Read(op.Try))
//
// A waiter that does not keep Try leaves op on the caller's stack.
type ReadOp struct {
	P     []byte
	n     int
	errno syscall.Errno
}

// Try reads once and reports whether it is done (anything but EAGAIN).
func (o *ReadOp) Try(fd uintptr) bool {
	o.n, o.errno = Read(fd, o.P)
	return o.errno != syscall.EAGAIN
}

// Result is what the read gives a net.Conn's caller: io.EOF at the end of the stream,
// err when the wait failed (closed, deadline).
func (o *ReadOp) Result(err error) (int, error) { return readResult("read", o.n, o.errno, err) }

// readResult maps a read's outcome to io.Reader's, the wait's error err first.
func readResult(call string, n int, errno syscall.Errno, err error) (int, error) {
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError(call, errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// WriteOp writes all of A, then all of B, for a waiter as ReadOp's, in one writev
// while the socket takes both at once.
type WriteOp struct {
	A, B  []byte
	done  int
	errno syscall.Errno
}

// Try writes until everything is written (done), an error (done), or the socket is
// full (not done: wait until it is writable).
func (o *WriteOp) Try(fd uintptr) bool {
	a, b := o.A, o.B
	for total := len(a) + len(b); o.done < total; {
		var (
			n int
			e syscall.Errno
		)
		switch {
		case o.done >= len(a):
			n, e = Write(fd, b[o.done-len(a):])
		case len(b) == 0:
			n, e = Write(fd, a[o.done:])
		default:
			var iov [2]syscall.Iovec
			iov[0].Base, iov[1].Base = &a[o.done], &b[0]
			iov[0].SetLen(len(a) - o.done)
			iov[1].SetLen(len(b))
			n, e = Writev(fd, iov[:])
		}
		if e == syscall.EAGAIN {
			return false
		}
		if e != 0 {
			o.errno = e
			return true
		}
		o.done += n
	}
	return true
}

// Result is the bytes written and the error that stopped the write, if any.
func (o *WriteOp) Result(err error) (int, error) {
	if err == nil && o.errno != 0 {
		err = os.NewSyscallError("write", o.errno)
	}
	return o.done, err
}

// Raw reads and writes a non-blocking socket through its syscall.RawConn with raw system
// calls. The RawConn keeps the descriptor's locks, deadlines and Close semantics, so Raw
// behaves as the net.Conn it came from.
type Raw struct{ rc syscall.RawConn }

// Of returns a Raw for c when c is a socket (a syscall.Conn).
func Of(c any) (Raw, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Raw{}, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Raw{}, false
	}
	return NewRaw(rc), true
}

func socketTryWriter(w any) TryWriter {
	if r, ok := Of(w); ok {
		return r
	}
	return nil
}

// Read reads into p, waiting until there is something; io.EOF at the end of the stream.
func (r Raw) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	op := ReadOp{P: p}
	return op.Result(r.rc.Read(op.Try))
}

// Write writes all of p unless an error stops it.
func (r Raw) Write(p []byte) (int, error) { return r.WritePair(p, nil) }

// WritePair writes a then b, in one writev where the socket takes them at once.
func (r Raw) WritePair(a, b []byte) (int, error) {
	op := WriteOp{A: a, B: b}
	return op.Result(r.rc.Write(op.Try))
}

// ReadReady reads what the socket has already received into p without waiting for
// more: 0 when nothing is there yet (or at EOF or on an error, which the next Read
// reports).
func (r Raw) ReadReady(p []byte) int {
	op := ReadOp{P: p}
	_ = r.rc.Read(op.tryOnce)
	if op.errno != 0 {
		return 0
	}
	return op.n
}

func (o *ReadOp) tryOnce(fd uintptr) bool {
	o.Try(fd)
	return true // never wait: an empty socket is an answer too
}

// TryWrite makes one write(2). RawConn.Write takes the descriptor's write lock and
// honours its deadline and Close, so it cannot race with a blocking Write or outlive
// the socket; it never waits for writability.
func (r Raw) TryWrite(p []byte) (int, error) {
	op := tryWriteOp{p: p}
	return tryResult(op.n, r.rc.Write(op.try), op.errno)
}

// TryWriteBuffers makes one writev(2) of bufs (at most MaxGather of them), the way
// TryWrite makes one write(2).
func (r Raw) TryWriteBuffers(bufs [][]byte) (int, error) {
	var op tryWritevOp
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if op.k == len(op.iov) {
			break
		}
		op.iov[op.k].Base = &b[0]
		op.iov[op.k].SetLen(len(b))
		op.k++
	}
	if op.k == 0 {
		return 0, nil
	}
	err := r.rc.Write(op.try)
	return tryResult(op.n, err, op.errno)
}

type tryWriteOp struct {
	p     []byte
	n     int
	errno syscall.Errno
}

func (o *tryWriteOp) try(fd uintptr) bool {
	o.n, o.errno = Write(fd, o.p)
	return true
}

type tryWritevOp struct {
	iov   [MaxGather]syscall.Iovec
	k, n  int
	errno syscall.Errno
}

func (o *tryWritevOp) try(fd uintptr) bool {
	o.n, o.errno = Writev(fd, o.iov[:o.k])
	return true
}

// tryResult turns a non-blocking write's outcome into TryWriter's: a full destination
// (EAGAIN) is a short write, not an error.
func tryResult(n int, err error, errno syscall.Errno) (int, error) {
	if err != nil {
		return n, err
	}
	if errno == 0 || errno == syscall.EAGAIN || errno == syscall.EINTR {
		return n, nil
	}
	return n, errno
}

// NewRaw returns the Raw of a socket's RawConn.
func NewRaw(rc syscall.RawConn) Raw { return Raw{rc} }
