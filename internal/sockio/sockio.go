// Package sockio holds the data path's raw socket system calls and what is built on them:
// reads and writes with a net.Conn's blocking semantics on top of a socket's poller
// (its syscall.RawConn, or any waiter of the same shape), and non-blocking try-writes.
// Linux also gets the socket set-up calls of redirect's own socket stack.
//
// The sockets are non-blocking, so a read or write never blocks in the kernel and is
// made as a raw system call, without the runtime's entersyscall/exitsyscall. Besides
// that bookkeeping, this avoids a cost of bursty servers: the first system call a
// process makes after all its Ps went idle wakes the runtime's sysmon thread, which
// then naps every 20 us while the process is busy. A tunnel end sees several such
// bursts per connection, and on a 2-vCPU VM each wake-up of a sleeping thread is a
// cross-CPU interrupt (docs/performance.md, "Raw system calls, own poller entry").
package sockio

import "io"

// MaxGather is the most buffers a TryWriteBuffers call takes.
const MaxGather = 16

// TryWriter is a destination that takes data without blocking. TryWrite writes what
// the destination takes right now and never waits: it returns n < len(p) and a nil
// error when the destination is full.
type TryWriter interface {
	TryWrite(p []byte) (n int, err error)
}

// BuffersTryWriter is a TryWriter that also takes several buffers in one call
// (writev). The ones NonBlocking returns for sockets are; a wrapper of one should be
// too.
type BuffersTryWriter interface {
	TryWriter
	// TryWriteBuffers writes, like TryWrite, what the destination takes now of bufs
	// in order; callers pass at most MaxGather buffers.
	TryWriteBuffers(bufs [][]byte) (n int, err error)
}

// NonBlocking returns a TryWriter for w: w itself when it is one, a Raw when w is a
// socket (a syscall.Conn) on a platform with non-blocking writes, and nil otherwise.
func NonBlocking(w io.Writer) TryWriter {
	if tw, ok := w.(TryWriter); ok {
		return tw
	}
	return socketTryWriter(w)
}
