package ztunnel

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/hbone"
)

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

type closeWriter interface{ CloseWrite() error }

// socket is a TCP connection with its descriptor at hand: a *net.TCPConn, or a
// *redirect.Socket (captured, or dialed to a pod).
type socket interface {
	net.Conn
	syscall.Conn
	closeWriter
}

// counter counts bytes as they are copied so the admin view and metrics see live figures.
type counter struct{ n atomic.Int64 }

// pump copies a->b and b->a until both directions end. When one direction reaches EOF
// the write side of the other connection is half-closed, so protocols that rely on
// half-close (request, then EOF, then response) keep working end to end. An error in
// either direction aborts both. Both connections are closed on return.
func pump(a, b net.Conn, aToB, bToA *counter) error {
	ch := make(chan error, 1)
	pumpAsync(a, b, aToB, bToA, func(err error) { ch <- err })
	return <-ch
}

// pumpAsync is pump that returns as soon as the calling goroutine's part is done. done
// gets the first error once both directions ended and both connections are closed, in
// the goroutine that finished last, which may be an HBONE connection's read loop: done
// must not block.
//
// a is the initiator's side. Between an HBONE stream and a socket, the stream->socket
// direction runs without a goroutine of its own (the HBONE read loop writes to the
// socket) and the calling goroutine runs the other. Otherwise one direction runs in the
// calling goroutine, b->a, the one that usually ends last (a client closes its side
// first, the server answers with its own close).
func pumpAsync(a, b net.Conn, aToB, bToA *counter, done func(error)) {
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
	case copyHalfAsync(b, a, aToB, end):
		end(copyHalf(a, b, bToA))
	case copyHalfAsync(a, b, bToA, end):
		end(copyHalf(b, a, aToB))
	default:
		go func() { end(copyHalf(b, a, aToB)) }()
		end(copyHalf(a, b, bToA))
	}
}

// tcpConverter is a socket that can become a *net.TCPConn (redirect.Socket).
type tcpConverter interface {
	TCPConn() (*net.TCPConn, error)
}

// spliceable returns a and b ready for the kernel's splice when both are sockets: the
// net package splices between two *net.TCPConn only. A conversion that fails leaves the
// socket as it was (the copy then goes through a buffer).
func spliceable(a, b net.Conn) (net.Conn, net.Conn) {
	if isStream(a) || isStream(b) {
		return a, b
	}
	conv := func(c net.Conn) net.Conn {
		if tc, ok := c.(tcpConverter); ok {
			if t, err := tc.TCPConn(); err == nil {
				return t
			}
		}
		return c
	}
	return conv(a), conv(b)
}

// asyncWriterTo is an HBONE stream, which can copy itself to a socket without a
// goroutine (hbone's WriteToAsync).
type asyncWriterTo interface {
	WriteToAsync(w io.Writer, done func(int64, error))
}

// copyHalfAsync starts copying the HBONE stream src to the socket dst without a
// goroutine of its own and reports true; done gets the result once dst is half-closed.
// done may run in the HBONE connection's read loop, so it must not block. It reports
// false when src and dst are not such a pair.
func copyHalfAsync(dst, src net.Conn, c *counter, done func(error)) bool {
	as, ok := src.(asyncWriterTo)
	if !ok {
		return false
	}
	if _, ok := dst.(socket); !ok {
		return false
	}
	tw := hbone.NonBlocking(dst)
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
func copyHalf(dst, src net.Conn, c *counter) error {
	var err error
	dt, dok := dst.(*net.TCPConn)
	st, tok := src.(*net.TCPConn)
	ss, sok := src.(socket)
	wt, wok := src.(io.WriterTo)
	switch {
	case dok && tok:
		var n int64
		n, err = dt.ReadFrom(st)
		c.n.Add(n)
	case sok && isStream(dst):
		// A socket into an HBONE stream: read straight into the TLS records that carry
		// the data, no copy buffer. The stream counts through countedConn.
		_, err = dst.(io.ReaderFrom).ReadFrom(countedConn{ss, c})
	case wok && !sok:
		// An HBONE stream writes its receive buffer out directly: no copy buffer. When
		// dst is a socket, the connection's read loop may write to it directly.
		cw := countingWriter{dst, c}
		var w io.Writer = cw
		if tw := hbone.NonBlocking(dst); tw != nil {
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
	if cw, ok := dst.(closeWriter); ok {
		if cerr := cw.CloseWrite(); cerr != nil && !isClosedErr(cerr) {
			return cerr
		}
		return nil
	}
	return dst.Close()
}

func isStream(c net.Conn) bool {
	switch c.(type) {
	case *hbone.Conn, *hbone.Stream:
		return true
	}
	return false
}

// countedConn is a socket whose reader (hbone's ReadFrom) reports the bytes it sent.
type countedConn struct {
	socket
	c *counter
}

func (cc countedConn) CountBytes(n int64) { cc.c.n.Add(n) }

// countingWriter counts what reaches w, live.
type countingWriter struct {
	w io.Writer
	c *counter
}

func (cw countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.c.n.Add(int64(n))
	return n, err
}

// countingTryWriter is a countingWriter that also takes non-blocking writes.
type countingTryWriter struct {
	countingWriter
	tw hbone.TryWriter
}

func (cw countingTryWriter) TryWrite(p []byte) (int, error) {
	n, err := cw.tw.TryWrite(p)
	cw.c.n.Add(int64(n))
	return n, err
}

// TryWriteBuffers passes a burst of received chunks on in one writev where tw can.
func (cw countingTryWriter) TryWriteBuffers(bufs [][]byte) (int, error) {
	bw, ok := cw.tw.(hbone.BuffersTryWriter)
	if !ok {
		for _, b := range bufs {
			if len(b) > 0 {
				return cw.TryWrite(b) // the first buffer with data: a short write
			}
		}
		return 0, nil
	}
	n, err := bw.TryWriteBuffers(bufs)
	cw.c.n.Add(int64(n))
	return n, err
}

func copyBuf(dst io.Writer, src io.Reader, c *counter) error {
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
			c.n.Add(int64(n))
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

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}
