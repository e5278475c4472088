package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

type asyncResult struct {
	n   int64
	err error
}

// writeToAsync starts c.WriteToAsync(w) and returns where its result arrives and how
// many times done ran.
func writeToAsync(c *Conn, w io.Writer) (<-chan asyncResult, *atomic.Int32) {
	res := make(chan asyncResult, 2)
	calls := new(atomic.Int32)
	c.WriteToAsync(w, func(n int64, err error) {
		calls.Add(1)
		res <- asyncResult{n, err}
	})
	return res, calls
}

// WriteToAsync delivers every byte once, in order, and calls done once with the count,
// whether the destination takes everything (the read loop writes it all), part of it,
// or nothing at once (WriteTo's goroutine takes over).
func TestWriteToAsync(t *testing.T) { onLayers(t, testWriteToAsync) }

func testWriteToAsync(t *testing.T) {
	const size = 4 << 20
	for _, tc := range []struct {
		name string
		take func(int) int
	}{
		{"takes everything", func(n int) int { return n }},
		{"takes part", func(n int) int { return rand.IntN(n + 1) }},
		{"always full", func(int) int { return 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := dialEcho(t, echoHandler)
			sink := &sinkWriter{h: sha256.New(), take: tc.take}
			sent := make(chan []byte, 1)
			go func() { sent <- sendRandom(t, c, size, 9) }()
			res, calls := writeToAsync(c, sink)
			r := <-res
			if r.err != nil || r.n != size {
				t.Fatalf("done(%d, %v), want done(%d, nil)", r.n, r.err, size)
			}
			if !bytes.Equal(sink.h.Sum(nil), <-sent) || sink.n != size {
				t.Fatalf("sink got %d bytes, or other bytes, of %d", sink.n, size)
			}
			c.Close()
			c.SetReadDeadline(time.Now())
			if n := calls.Load(); n != 1 {
				t.Fatalf("done ran %d times", n)
			}
		})
	}
}

// Data and the peer's END_STREAM that arrived before the call are written out by the
// caller, and done runs without anything further arriving.
func TestWriteToAsyncDataAlreadyHere(t *testing.T) { onLayers(t, testWriteToAsyncDataAlreadyHere) }

func testWriteToAsyncDataAlreadyHere(t *testing.T) {
	c, _ := dialEcho(t, echoHandler)
	payload := bytes.Repeat([]byte("early "), 1000)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "echo and END_STREAM buffered", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.rlen == len(payload) && c.remoteEnd
	})
	// A destination without TryWrite: the fallback, WriteTo in a goroutine.
	var got bytes.Buffer
	res, _ := writeToAsync(c, io.MultiWriter(&got))
	if r := <-res; r.err != nil || r.n != int64(len(payload)) || !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("done(%d, %v) with %d bytes delivered, want %d", r.n, r.err, got.Len(), len(payload))
	}

	c2, _ := dialEcho(t, echoHandler)
	c2.Write(payload)
	c2.CloseWrite()
	eventually(t, "echo and END_STREAM buffered", func() bool {
		c2.mu.Lock()
		defer c2.mu.Unlock()
		return c2.rlen == len(payload) && c2.remoteEnd
	})
	sink := &sinkWriter{h: sha256.New(), take: func(n int) int { return n }}
	res, _ = writeToAsync(c2, sink)
	select {
	case r := <-res:
		if r.err != nil || r.n != int64(len(payload)) || sink.n != int64(len(payload)) {
			t.Fatalf("done(%d, %v) with %d bytes delivered, want %d", r.n, r.err, sink.n, len(payload))
		}
	default:
		t.Fatal("done did not run within WriteToAsync, though everything was here")
	}
}

// An asynchronous WriteTo has no goroutine waiting on its stream; it still ends, with
// WriteTo's error, when a deadline passes, the stream is closed or its connection is
// lost.
func TestWriteToAsyncEnds(t *testing.T) { onLayers(t, testWriteToAsyncEnds) }

func testWriteToAsyncEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(c *Conn, srv *Server)
		want error // nil: any error
	}{
		{"deadline set in the past", func(c *Conn, _ *Server) { c.SetReadDeadline(time.Now()) }, os.ErrDeadlineExceeded},
		{"deadline passes later", func(c *Conn, _ *Server) { c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) }, os.ErrDeadlineExceeded},
		{"stream closed", func(c *Conn, _ *Server) { c.Close() }, net.ErrClosed},
		{"connection lost", func(_ *Conn, srv *Server) { srv.Close() }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, addr := startServer(t, HandlerFunc(func(s *Stream) {
				if s.Accept() == nil {
					io.Copy(io.Discard, s) // until the stream or its connection ends
				}
			}), nil)
			c, err := newTestPool(t, nil).Dial(context.Background(), testReq(addr))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			res, calls := writeToAsync(c, &sinkWriter{h: sha256.New(), take: func(n int) int { return n }})
			tc.end(c, srv)
			r := <-res
			if r.err == nil || (tc.want != nil && !errors.Is(r.err, tc.want)) {
				t.Fatalf("done(%d, %v), want error %v", r.n, r.err, tc.want)
			}
			c.Close()
			c.SetReadDeadline(time.Now())
			if n := calls.Load(); n != 1 {
				t.Fatalf("done ran %d times", n)
			}
		})
	}
}
