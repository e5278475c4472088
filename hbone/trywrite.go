package hbone

import (
	"io"
	"syscall"
)

// TryWriter is a destination the connection's read loop may hand received data to
// directly. TryWrite writes what the destination takes right now and never blocks:
// it returns n < len(p) and a nil error when the destination is full.
//
// Stream.WriteTo uses it: while WriteTo waits for data, the read loop writes each
// DATA payload straight to the destination instead of waking WriteTo's goroutine,
// which saves a goroutine hand-off per batch (on the receiving tunnel end of a bulk
// transfer, and twice on the critical path of every request/response). Whatever
// TryWrite does not take is left for WriteTo, which writes it blocking.
type TryWriter interface {
	TryWrite(p []byte) (n int, err error)
}

// BuffersTryWriter is a TryWriter that also takes several buffers in one call
// (writev), so the read loop hands a burst of DATA frames, which land in separate
// receive chunks, to the destination in one system call instead of one per chunk.
// Those NonBlocking returns are; a wrapper of one should be too.
type BuffersTryWriter interface {
	TryWriter
	// TryWriteBuffers writes, like TryWrite, what the destination takes now of bufs
	// in order; callers pass at most 16 buffers.
	TryWriteBuffers(bufs [][]byte) (n int, err error)
}

// NonBlocking returns a TryWriter for w when w is a socket (it implements
// syscall.Conn), and nil otherwise.
func NonBlocking(w io.Writer) TryWriter {
	if tw, ok := w.(TryWriter); ok {
		return tw
	}
	sc, ok := w.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rawTryWriterFor(rc)
}
