//go:build unix

package hbone

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func TestSockIOPicksRawSocket(t *testing.T) {
	a, _ := tcpPair(t)
	if _, ok := sockIO(a).(rawSock); !ok {
		t.Errorf("sockIO(*net.TCPConn) = %T, want rawSock", sockIO(a))
	}
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if got := sockIO(p); got != io.ReadWriter(p) {
		t.Errorf("sockIO(pipe) = %T, want the pipe itself", got)
	}
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
func TestRawSockSemantics(t *testing.T) {
	t.Run("large write to a slow reader", func(t *testing.T) {
		a, b := tcpPair(t)
		payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: beyond the socket buffers
		got := slowRead(b, 50*time.Microsecond)
		n, err := sockIO(a).Write(payload)
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
			a, b := tcpPair(t)
			first := bytes.Repeat([]byte{'a'}, sizes[0])
			second := bytes.Repeat([]byte("0123456789abcdef"), sizes[1]/16)
			got := slowRead(b, 20*time.Microsecond)
			n, err := sockIO(a).(pairWriter).WritePair(first, second)
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
		a, b := tcpPair(t)
		go func() {
			time.Sleep(20 * time.Millisecond)
			b.Write([]byte("late"))
			b.CloseWrite()
		}()
		rw := sockIO(a)
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
		a, _ := tcpPair(t)
		a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := sockIO(a).Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past the deadline = %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("write deadline", func(t *testing.T) {
		a, _ := tcpPair(t) // nobody reads the other end
		a.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := sockIO(a).Write(make([]byte, 64<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write past the deadline = %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		a, _ := tcpPair(t)
		rw := sockIO(a)
		a.Close()
		if _, err := rw.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close = %v, want net.ErrClosed", err)
		}
		if _, err := rw.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write after Close = %v, want net.ErrClosed", err)
		}
	})
	t.Run("reset by peer", func(t *testing.T) {
		a, b := tcpPair(t)
		b.SetLinger(0)
		b.Close() // RST
		rw := sockIO(a)
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
	})
}
