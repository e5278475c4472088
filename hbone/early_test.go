package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// Data written before the server answered arrives once the handler accepts.
func TestDialEarlyDataBeforeAccept(t *testing.T) {
	release := make(chan struct{})
	h := HandlerFunc(func(s *Stream) {
		<-release // the client's data is already buffered here
		if err := s.Accept(); err != nil {
			return
		}
		io.Copy(s, s)
		s.CloseWrite()
	})
	_, addr := startServer(t, h, nil)
	p := newTestPool(t, nil)
	c, err := p.DialEarly(context.Background(), testReq(addr), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("early."), 20000) // more than one frame, less than a window
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	close(release)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %d bytes, want %d", len(got), len(msg))
	}
}

// A refusal surfaces as the same *StatusError on Read and then on Write.
func TestDialEarlyRefusal(t *testing.T) {
	tests := []struct {
		name     string
		handler  HandlerFunc
		sentinel error
	}{
		{"401", func(s *Stream) { s.Reject(StatusFor(ErrDenied), "policy") }, ErrDenied},
		{"503 unanswered", func(s *Stream) {}, ErrUpstream},
		{"400 reject", func(s *Stream) { s.Reject(StatusFor(ErrBadRequest), "bad") }, ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := startServer(t, tt.handler, nil)
			p := newTestPool(t, nil)
			c, err := p.DialEarly(context.Background(), testReq(addr), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello")) // may or may not fail: the answer races it
			_, err = c.Read(make([]byte, 10))
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("Read: %v, want %v", err, tt.sentinel)
			}
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Read: %T, want *StatusError", err)
			}
			if _, err := c.Write([]byte("more")); err == nil {
				t.Fatal("Write after a refusal succeeded")
			}
			if st := p.Stats(); st.Conns != 1 {
				t.Fatalf("a refusal must not cost the connection: %+v", st)
			}
		})
	}
}

// No answer before ctx ends: the stream is reset and Read fails.
func TestDialEarlyAnswerTimeout(t *testing.T) {
	release := make(chan struct{})
	h := HandlerFunc(func(s *Stream) { <-release })
	_, addr := startServer(t, h, nil)
	t.Cleanup(func() { close(release) })
	p := newTestPool(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	c, err := p.DialEarly(ctx, testReq(addr), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("Read without an answer: %v, want an error", err)
	}
}

// Once answered, the dial context no longer matters.
func TestDialEarlyContextAfterAnswer(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	c, err := p.DialEarly(ctx, testReq(addr), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	one := []byte{7}
	if _, err := c.Write(one); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, one); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := c.Write(one); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, one); err != nil || one[0] != 7 {
		t.Fatalf("after cancel: %v %v", one, err)
	}
}

// writeCounter counts writes to the TCP socket under the TLS connection.
type writeCounter struct {
	net.Conn
	n *atomic.Int32
}

func (w writeCounter) Write(p []byte) (int, error) {
	w.n.Add(1)
	return w.Conn.Write(p)
}

// DialEarly's first data goes out with the request: one socket write for both
// when the windows take it, and still all of it, in order, when they do not.
func TestDialEarlyFirstData(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	var writes atomic.Int32
	p := newTestPool(t, func(cfg *ClientConfig) {
		cfg.Dial = func(ctx context.Context, network, a string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, a)
			if err != nil {
				return nil, err
			}
			return writeCounter{nc, &writes}, nil
		}
	})
	// A first stream, used to its end, opens the pooled connection and leaves
	// nothing (settings, acks) for later writes.
	warm, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(warm); err != nil {
		t.Fatal(err)
	}
	warm.Close()
	eventually(t, "warm-up stream gone", func() bool { return p.Stats().Streams == 0 })
	for _, tc := range []struct {
		name      string
		first     int
		oneWrite  bool // the request and first fit one socket write
		restAfter int
	}{
		{"one byte", 1, true, 0},
		{"several frames", 40000, true, 5000},
		{"beyond one grant", maxWriteChunk + 1, false, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := make([]byte, tc.first+tc.restAfter)
			for i := range msg {
				msg[i] = byte(i * 13)
			}
			before := writes.Load()
			c, err := p.DialEarly(context.Background(), testReq(addr), msg[:tc.first])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := writes.Load() - before; tc.oneWrite && got != 1 {
				t.Errorf("request and %d bytes of first data took %d socket writes, want 1", tc.first, got)
			}
			go func() {
				c.Write(msg[tc.first:])
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("echo: got %d bytes, want %d (or different content)", len(got), len(msg))
			}
		})
	}
}
