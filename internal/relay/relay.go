// Package relay copies the bytes of a proxied connection between its two ends, both
// ways: half-close passed on, both ends aborted promptly on an error, the kernel's splice
// between two TCP sockets, pooled copy buffers, and the fast paths a tunnel stream
// offers (an HBONE stream reading straight from a socket into its TLS records, and
// writing into one from its connection's read loop). It knows its ends only by the
// small interfaces below, so ztunnel and a waypoint use it alike; it imports no tunnel
// implementation.
package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/internal/sockio"
)

// CloseWriter ends a connection's write side: a TCP FIN, an HBONE stream's END_STREAM.
type CloseWriter interface{ CloseWrite() error }

// Socket is a TCP connection with its descriptor at hand: a *net.TCPConn, or a socket
// ztunnel set up itself (redirect.Socket).
type Socket interface {
	net.Conn
	syscall.Conn
	CloseWriter
}

// AsyncWriterTo copies itself to w until its peer ends its side, without a goroutine
// of its own where it can (an HBONE stream's connection read loop writes to w), and
// calls done once with the bytes written and the first error. done must not block.
type AsyncWriterTo interface {
	WriteToAsync(w io.Writer, done func(int64, error))
}

// Stream is a tunnel stream: hbone.Conn on the client side, hbone.Stream on the
// server side, or any stream that keeps their contract. Its ReadFrom sends what a
// reader yields, reading straight from a Socket into its own send path, and calls
// CountBytes(int64) on a reader that has it with the bytes sent as they go (the reader
// itself is not read). The relay tells a Stream from a plain net.Conn by WriteToAsync.
type Stream interface {
	net.Conn
	CloseWriter
	io.ReaderFrom
	AsyncWriterTo
}

// TCPConverter is a socket that can become a *net.TCPConn (redirect.Socket), for the
// net package's splice, which works between two *net.TCPConn only.
type TCPConverter interface {
	TCPConn() (*net.TCPConn, error)
}

// TryWriter writes what its destination takes right now without blocking: n < len(p)
// and a nil error when it is full. A Stream's receive path hands data to one directly.
type TryWriter = sockio.TryWriter

// BuffersTryWriter is a TryWriter that also takes several buffers in one call (writev).
type BuffersTryWriter = sockio.BuffersTryWriter

// Relay pumps connections. The zero value works, without the non-blocking writes.
type Relay struct {
	// NonBlocking returns a TryWriter for w when w is a socket, and nil otherwise
	// (sockio.NonBlocking). With it, a Stream's receive path writes into the socket
	// on the other side itself: one goroutine and a wake-up less per connection and
	// batch. Nil: a Stream is copied to a socket by a goroutine of the relay.
	NonBlocking func(w io.Writer) TryWriter
}

// Copy buffers come in two sizes. A connection starts with a small buffer, so idle and
// chatty connections stay cheap; a read that fills it marks a bulk flow, which switches to
// a large buffer (fewer syscalls and larger HBONE frames) until reads get small again.
// 512 KiB rather than 256: on the sending tunnel end of a single stream it cut CPU per GB
// by about 10 % (interleaved A/B, docs/performance.md), at 512 KiB per connection only
// while it moves bulk data.
const (
	smallBuf = 16 << 10
	largeBuf = 512 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

// SmallBuffer takes a 16 KiB buffer from the pool the relay copies with (for a caller
// that reads a connection's first bytes before relaying it); PutSmallBuffer returns it.
func SmallBuffer() *[]byte { return smallPool.Get().(*[]byte) }

// PutSmallBuffer returns a buffer SmallBuffer gave.
func PutSmallBuffer(b *[]byte) { smallPool.Put(b) }

// Pump copies a->b and b->a until both directions end. When one direction reaches EOF
// the write side of the other connection is half-closed, so protocols that rely on
// half-close (request, then EOF, then response) keep working end to end. An error in
// either direction aborts both. Both connections are closed on return. aToB and bToA
// count the bytes copied each way, live.
func (r *Relay) Pump(a, b net.Conn, aToB, bToA *atomic.Int64) error {
	ch := make(chan error, 1)
	r.PumpAsync(a, b, aToB, bToA, func(err error) { ch <- err })
	return <-ch
}

// PumpAsync is Pump that returns as soon as the calling goroutine's part is done. done
// gets the first error once both directions ended and both connections are closed, in
// the goroutine that finished last, which may be an HBONE connection's read loop: done
// must not block.
//
// a is the initiator's side. Between a Stream and a socket, the stream->socket
// direction runs without a goroutine of its own (the stream's read loop writes to the
// socket) and the calling goroutine runs the other. Otherwise one direction runs in the
// calling goroutine, b->a, the one that usually ends last (a client closes its side
// first, the server answers with its own close).
func (r *Relay) PumpAsync(a, b net.Conn, aToB, bToA *atomic.Int64, done func(error)) {
	var (
		mu    sync.Mutex
		first error
		left  = 2
	)
	end := func(err error) {
		mu.Lock()
		abort := err != nil && first == nil
		if abort {
			first = err
		}
		left--
		last := left == 0
		mu.Unlock()
		if abort {
			// Unblock the other direction promptly. Not under mu: the stream's deadline
			// may end its asynchronous direction, which calls end, right here.
			now := time.Now()
			_ = a.SetDeadline(now)
			_ = b.SetDeadline(now)
		}
		if last {
			_ = a.Close()
			_ = b.Close()
			done(first) // no direction writes first any more
		}
	}
	switch {
	case r.copyHalfAsync(b, a, aToB, end):
		end(r.copyHalf(a, b, bToA))
	case r.copyHalfAsync(a, b, bToA, end):
		end(r.copyHalf(b, a, aToB))
	default:
		go func() { end(r.copyHalf(b, a, aToB)) }()
		end(r.copyHalf(a, b, bToA))
	}
}

// Spliceable returns a and b ready for the kernel's splice when both are sockets:
// a TCPConverter becomes the *net.TCPConn it converts to. A conversion that fails
// leaves the socket as it was (the copy then goes through a buffer), and next to a
// Stream nothing changes (the stream reads the socket itself). Call it before Pump and
// keep the results: a converted socket lives on only in the returned connection.
func Spliceable(a, b net.Conn) (net.Conn, net.Conn) {
	if isStream(a) || isStream(b) {
		return a, b
	}
	conv := func(c net.Conn) net.Conn {
		if tc, ok := c.(TCPConverter); ok {
			if t, err := tc.TCPConn(); err == nil {
				return t
			}
		}
		return c
	}
	return conv(a), conv(b)
}

// nonBlocking is r.NonBlocking(w), nil without one.
func (r *Relay) nonBlocking(w io.Writer) TryWriter {
	if r.NonBlocking == nil {
		return nil
	}
	return r.NonBlocking(w)
}

// copyHalfAsync starts copying the Stream src to the socket dst without a goroutine
// of its own and reports true; done gets the result once dst is half-closed. done may
// run in the stream's read loop, so it must not block. It reports false when src and
// dst are not such a pair.
func (r *Relay) copyHalfAsync(dst, src net.Conn, c *atomic.Int64, done func(error)) bool {
	as, ok := src.(AsyncWriterTo)
	if !ok {
		return false
	}
	if _, ok := dst.(Socket); !ok {
		return false
	}
	tw := r.nonBlocking(dst)
	if tw == nil {
		return false
	}
	cw := countingWriter{dst, c}
	as.WriteToAsync(countingTryWriter{cw, tw}, func(_ int64, err error) {
		if err == nil {
			err = halfClose(dst)
		}
		done(err)
	})
	return true
}

// copyHalf copies src to dst, then half-closes dst. Between two TCP sockets the
// kernel's splice path is used (no user-space buffer at all).
func (r *Relay) copyHalf(dst, src net.Conn, c *atomic.Int64) error {
	var err error
	dt, dok := dst.(*net.TCPConn)
	st, tok := src.(*net.TCPConn)
	ss, sok := src.(Socket)
	wt, wok := src.(io.WriterTo)
	switch {
	case dok && tok:
		var n int64
		n, err = dt.ReadFrom(st)
		c.Add(n)
	case sok && isStream(dst):
		// A socket into a stream: read straight into the TLS records that carry the
		// data, no copy buffer. The stream counts through countedConn.
		_, err = dst.(io.ReaderFrom).ReadFrom(countedConn{ss, c})
	case wok && !sok:
		// A stream writes its receive buffer out directly: no copy buffer. When dst is
		// a socket, the stream's read loop may write to it directly.
		cw := countingWriter{dst, c}
		var w io.Writer = cw
		if tw := r.nonBlocking(dst); tw != nil {
			w = countingTryWriter{cw, tw}
		}
		_, err = wt.WriteTo(w)
	default:
		err = copyBuf(dst, src, c)
	}
	if err != nil {
		return err
	}
	return halfClose(dst)
}

// halfClose ends dst's write side (its whole self when it has none of its own).
func halfClose(dst net.Conn) error {
	if cw, ok := dst.(CloseWriter); ok {
		if cerr := cw.CloseWrite(); cerr != nil && !IsClosed(cerr) {
			return cerr
		}
		return nil
	}
	return dst.Close()
}

func isStream(c net.Conn) bool {
	_, ok := c.(Stream)
	return ok
}

// countedConn is a socket whose reader (a Stream's ReadFrom) reports the bytes it sent.
type countedConn struct {
	Socket
	c *atomic.Int64
}

func (cc countedConn) CountBytes(n int64) { cc.c.Add(n) }

// countingWriter counts what reaches w, live.
type countingWriter struct {
	w io.Writer
	c *atomic.Int64
}

func (cw countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.c.Add(int64(n))
	return n, err
}

// countingTryWriter is a countingWriter that also takes non-blocking writes.
type countingTryWriter struct {
	countingWriter
	tw TryWriter
}

func (cw countingTryWriter) TryWrite(p []byte) (int, error) {
	n, err := cw.tw.TryWrite(p)
	cw.c.Add(int64(n))
	return n, err
}

// TryWriteBuffers passes a burst of received chunks on in one writev where tw can.
func (cw countingTryWriter) TryWriteBuffers(bufs [][]byte) (int, error) {
	bw, ok := cw.tw.(BuffersTryWriter)
	if !ok {
		for _, b := range bufs {
			if len(b) > 0 {
				return cw.TryWrite(b) // the first buffer with data: a short write
			}
		}
		return 0, nil
	}
	n, err := bw.TryWriteBuffers(bufs)
	cw.c.Add(int64(n))
	return n, err
}

func copyBuf(dst io.Writer, src io.Reader, c *atomic.Int64) error {
	bp, large := smallPool.Get().(*[]byte), false
	defer func() {
		if large {
			largePool.Put(bp)
		} else {
			smallPool.Put(bp)
		}
	}()
	for {
		buf := *bp
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			c.Add(int64(n))
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
		switch {
		case !large && n == len(buf):
			smallPool.Put(bp)
			bp, large = largePool.Get().(*[]byte), true
		case large && n < smallBuf:
			largePool.Put(bp)
			bp, large = smallPool.Get().(*[]byte), false
		}
	}
}

// IsClosed reports whether err only says a connection was closed or its deadline
// passed: how a relayed connection ends when the other direction aborted it.
func IsClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}
