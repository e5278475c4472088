package hbone

import (
	"io"

	"github.com/ambitmesh/ambit/internal/sockio"
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
type TryWriter = sockio.TryWriter

// BuffersTryWriter is a TryWriter that also takes several buffers in one call
// (writev), so the read loop hands a burst of DATA frames, which land in separate
// receive chunks, to the destination in one system call instead of one per chunk.
// Those NonBlocking returns are; a wrapper of one should be too.
type BuffersTryWriter = sockio.BuffersTryWriter

// NonBlocking returns a TryWriter for w when w is one or a socket (it implements
// syscall.Conn), and nil otherwise.
func NonBlocking(w io.Writer) TryWriter { return sockio.NonBlocking(w) }
