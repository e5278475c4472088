package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
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
	c, err := p.DialEarly(context.Background(), testReq(addr))
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
			c, err := p.DialEarly(context.Background(), testReq(addr))
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
	c, err := p.DialEarly(ctx, testReq(addr))
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
	c, err := p.DialEarly(ctx, testReq(addr))
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
