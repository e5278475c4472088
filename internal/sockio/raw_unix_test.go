//go:build unix

package sockio_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/relay/relaytest"
	"github.com/ambitmesh/ambit/internal/sockio"
)

func rawOf(tb testing.TB, c net.Conn) sockio.Raw {
	tb.Helper()
	r, ok := sockio.Of(c)
	if !ok {
		tb.Fatalf("sockio.Of(%T): not a socket", c)
	}
	return r
}

// slowRead reads c to its end in 4 KiB reads with a pause before each, so that a writer
// meets full socket buffers, and sends what it read.
func slowRead(c net.Conn, pause time.Duration) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		var all bytes.Buffer
		buf := make([]byte, 4<<10)
		for {
			time.Sleep(pause)
			n, err := c.Read(buf)
			all.Write(buf[:n])
			if err != nil {
				break
			}
		}
		got <- all.Bytes()
	}()
	return got
}

// The raw reads and writes keep what a net.Conn promises: blocking until data or
// room, deadlines, EOF, errors after Close.
func TestRawSemantics(t *testing.T) {
	t.Run("large write to a slow reader", func(t *testing.T) {
		a, b := relaytest.TCPPair(t)
		payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: beyond the socket buffers
		got := slowRead(b, 50*time.Microsecond)
		n, err := rawOf(t, a).Write(payload)
		if err != nil || n != len(payload) {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(payload))
		}
		a.CloseWrite()
		if !bytes.Equal(<-got, payload) {
			t.Fatal("the reader got different bytes")
		}
	})
	t.Run("pair of writes to a slow reader", func(t *testing.T) {
		// WritePair's writev resumes after partial writes, within a and across into b.
		for _, sizes := range [][2]int{{100, 2 << 20}, {2 << 20, 100}, {1 << 20, 1 << 20}, {0, 1 << 20}} {
			a, b := relaytest.TCPPair(t)
			first := bytes.Repeat([]byte{'a'}, sizes[0])
			second := bytes.Repeat([]byte("0123456789abcdef"), sizes[1]/16)
			got := slowRead(b, 20*time.Microsecond)
			n, err := rawOf(t, a).WritePair(first, second)
			if err != nil || n != len(first)+len(second) {
				t.Fatalf("%v: WritePair = %d, %v; want %d, nil", sizes, n, err, len(first)+len(second))
			}
			a.CloseWrite()
			if !bytes.Equal(<-got, append(first, second...)) {
				t.Fatalf("%v: the reader got different bytes", sizes)
			}
		}
	})
	t.Run("read waits for data, then EOF", func(t *testing.T) {
		a, b := relaytest.TCPPair(t)
		go func() {
			time.Sleep(20 * time.Millisecond)
			b.Write([]byte("late"))
			b.CloseWrite()
		}()
		rw := rawOf(t, a)
		buf := make([]byte, 16)
		n, err := rw.Read(buf)
		if err != nil || string(buf[:n]) != "late" {
			t.Fatalf("Read = %q, %v; want \"late\", nil", buf[:n], err)
		}
		if _, err := rw.Read(buf); err != io.EOF {
			t.Fatalf("Read after the peer's FIN = %v, want io.EOF", err)
		}
	})
	t.Run("read deadline", func(t *testing.T) {
		a, _ := relaytest.TCPPair(t)
		a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := rawOf(t, a).Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past the deadline = %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("write deadline", func(t *testing.T) {
		a, _ := relaytest.TCPPair(t) // nobody reads the other end
		a.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := rawOf(t, a).Write(make([]byte, 64<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write past the deadline = %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		a, _ := relaytest.TCPPair(t)
		rw := rawOf(t, a)
		a.Close()
		if _, err := rw.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close = %v, want net.ErrClosed", err)
		}
		if _, err := rw.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write after Close = %v, want net.ErrClosed", err)
		}
		if _, err := rw.TryWrite([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("TryWrite after Close = %v, want net.ErrClosed", err)
		}
	})
	t.Run("reset by peer", func(t *testing.T) {
		a, b := relaytest.TCPPair(t)
		b.SetLinger(0)
		b.Close() // RST
		rw := rawOf(t, a)
		var err error
		for range 100 {
			if _, err = rw.Write(make([]byte, 64<<10)); err != nil {
				break
			}
		}
		var se *os.SyscallError
		if !errors.As(err, &se) {
			t.Fatalf("Write to a reset connection = %v, want an *os.SyscallError", err)
		}
		// A try-write reports the error itself, not as a short write.
		if _, err := rw.TryWrite([]byte("x")); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("TryWrite to a reset connection = %v, want EPIPE", err)
		}
	})
}

// Try-writes never wait: a full socket is a short write without an error, and a
// gathered write takes its buffers in order, skipping empty ones.
func TestRawTryWrite(t *testing.T) {
	t.Run("full socket", func(t *testing.T) {
		a, _ := relaytest.TCPPair(t) // nobody reads the other end
		r := rawOf(t, a)
		chunk := make([]byte, 1<<20)
		var short bool
		for range 256 {
			n, err := r.TryWrite(chunk)
			if err != nil {
				t.Fatalf("TryWrite = %d, %v; want no error", n, err)
			}
			if n < len(chunk) {
				short = true
				break
			}
		}
		if !short {
			t.Fatal("256 MiB taken by an unread socket: TryWrite waited")
		}
		n, err := r.TryWriteBuffers([][]byte{chunk, chunk})
		if err != nil || n >= 2*len(chunk) {
			t.Fatalf("TryWriteBuffers on a full socket = %d, %v; want a short write, nil", n, err)
		}
	})
	t.Run("gather", func(t *testing.T) {
		a, b := relaytest.TCPPair(t)
		r := rawOf(t, a)
		bufs := [][]byte{[]byte("one "), nil, []byte("two "), {}, []byte("three")}
		n, err := r.TryWriteBuffers(bufs)
		if err != nil || n != len("one two three") {
			t.Fatalf("TryWriteBuffers = %d, %v", n, err)
		}
		if n, err := r.TryWriteBuffers([][]byte{nil, {}}); n != 0 || err != nil {
			t.Fatalf("TryWriteBuffers of empty buffers = %d, %v; want 0, nil", n, err)
		}
		a.CloseWrite()
		got, err := io.ReadAll(b)
		if err != nil || string(got) != "one two three" {
			t.Fatalf("peer read %q, %v", got, err)
		}
	})
}

// ReadReady takes what has arrived and never waits.
func TestRawReadReady(t *testing.T) {
	a, b := relaytest.TCPPair(t)
	r := rawOf(t, a)
	buf := make([]byte, 16)
	if n := r.ReadReady(buf); n != 0 {
		t.Fatalf("ReadReady of an empty socket = %d", n)
	}
	b.Write([]byte("here"))
	deadline := time.Now().Add(5 * time.Second)
	n := 0
	for n == 0 && time.Now().Before(deadline) {
		n = r.ReadReady(buf)
	}
	if string(buf[:n]) != "here" {
		t.Fatalf("ReadReady = %q, want \"here\"", buf[:n])
	}
}

// NonBlocking: a TryWriter as it is, a socket as a Raw, anything else nil.
func TestNonBlocking(t *testing.T) {
	a, _ := relaytest.TCPPair(t)
	var buf bytes.Buffer
	r := rawOf(t, a)
	if _, ok := sockio.NonBlocking(a).(sockio.BuffersTryWriter); !ok {
		t.Errorf("NonBlocking(*net.TCPConn) = %T, want a BuffersTryWriter", sockio.NonBlocking(a))
	}
	if got := sockio.NonBlocking(r); got != sockio.TryWriter(r) {
		t.Errorf("NonBlocking(a TryWriter) = %T, want it back", got)
	}
	if got := sockio.NonBlocking(&buf); got != nil {
		t.Errorf("NonBlocking(*bytes.Buffer) = %T, want nil", got)
	}
}
