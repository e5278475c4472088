package hbone

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// sinkWriter is a WriteTo destination that takes non-blocking writes as told.
type sinkWriter struct {
	mu       sync.Mutex
	h        hash.Hash
	n        int64
	take     func(len int) int // how much one TryWrite takes
	tryErr   error             // returned by every TryWrite when set
	tries    int
	tookSome int
}

func (w *sinkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.h.Write(p)
	w.n += int64(len(p))
	return len(p), nil
}

func (w *sinkWriter) TryWrite(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tries++
	if w.tryErr != nil {
		return 0, w.tryErr
	}
	k := min(w.take(len(p)), len(p))
	if k > 0 {
		w.tookSome++
	}
	w.h.Write(p[:k])
	w.n += int64(k)
	return k, nil
}

// sendRandom writes size pseudo-random bytes to c in uneven pieces, then half-closes,
// and returns their sha256.
func sendRandom(tb testing.TB, c io.Writer, size int, seed byte) []byte {
	tb.Helper()
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{seed})
	buf := make([]byte, 100<<10)
	for left := size; left > 0; {
		n := min(left, len(buf)-rand.IntN(1000))
		r.Read(buf[:n])
		h.Write(buf[:n])
		if _, err := c.Write(buf[:n]); err != nil {
			tb.Errorf("write: %v", err)
			return nil
		}
		left -= n
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			tb.Errorf("close write: %v", err)
		}
	}
	return h.Sum(nil)
}

// TestWriteToDirectDelivery checks the read loop's direct delivery into WriteTo's
// destination: whatever share of each batch the destination takes without blocking,
// every byte arrives once, in order, and WriteTo counts it.
func TestWriteToDirectDelivery(t *testing.T) {
	const size = 16 << 20
	for _, tc := range []struct {
		name   string
		take   func(int) int
		tryErr error
		direct bool // the read loop must have delivered some bytes itself
	}{
		{name: "takes everything", take: func(n int) int { return n }, direct: true},
		{name: "takes part", take: func(n int) int { return rand.IntN(n + 1) }, direct: true},
		{name: "takes a little", take: func(int) int { return 7 }, direct: true},
		{name: "always full", take: func(int) int { return 0 }},
		{name: "try fails", take: func(n int) int { return n }, tryErr: errors.New("would block forever")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := dialEcho(t, echoHandler)
			sink := &sinkWriter{h: sha256.New(), take: tc.take, tryErr: tc.tryErr}
			sent := make(chan []byte, 1)
			go func() { sent <- sendRandom(t, c, size, 3) }()
			n, err := c.WriteTo(sink)
			if err != nil {
				t.Fatal(err)
			}
			want := <-sent
			if n != size || sink.n != size {
				t.Fatalf("WriteTo returned %d, sink got %d, want %d", n, sink.n, size)
			}
			if !bytes.Equal(sink.h.Sum(nil), want) {
				t.Fatal("sha256 of delivered data differs")
			}
			if tc.direct && sink.tookSome == 0 {
				t.Fatalf("the read loop never delivered directly (%d tries)", sink.tries)
			}
		})
	}
}

// TestWriteToSocketSlowReader delivers into a real TCP socket whose reader is slow, so
// non-blocking writes meet a full socket buffer and WriteTo takes over.
func TestWriteToSocketSlowReader(t *testing.T) {
	const size = 32 << 20
	c, _ := dialEcho(t, echoHandler)
	l, err := net.Listen("tcp", testAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan []byte, 1)
	go func() {
		a, err := l.Accept()
		if err != nil {
			t.Error(err)
			got <- nil
			return
		}
		defer a.Close()
		a.(*net.TCPConn).SetReadBuffer(16 << 10)
		h := sha256.New()
		buf := make([]byte, 8<<10)
		for i := 0; ; i++ {
			n, err := a.Read(buf)
			h.Write(buf[:n])
			if err != nil {
				break
			}
			if i%64 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		got <- h.Sum(nil)
	}()
	dst, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dst.(*net.TCPConn).SetWriteBuffer(16 << 10)
	if NonBlocking(dst) == nil {
		t.Fatal("NonBlocking(*net.TCPConn) = nil")
	}
	sent := make(chan []byte, 1)
	go func() { sent <- sendRandom(t, c, size, 5) }()
	n, err := c.WriteTo(dst)
	if err != nil {
		t.Fatal(err)
	}
	dst.(*net.TCPConn).CloseWrite()
	if n != size {
		t.Fatalf("WriteTo returned %d, want %d", n, size)
	}
	if !bytes.Equal(<-got, <-sent) {
		t.Fatal("sha256 of delivered data differs")
	}
}

// The read loop writes a stream's data out once per burst of records it holds, not
// once per DATA frame: with one 16 KiB frame per record from the sender, a bulk
// transfer reaches the socket in far fewer writes than frames.
func TestDirectDeliveryCoalescesFrames(t *testing.T) {
	const size = 16 << 20
	sink := &sinkWriter{h: sha256.New(), take: func(n int) int { return n }}
	done := make(chan error, 1)
	h := HandlerFunc(func(s *Stream) {
		if err := s.Accept(); err != nil {
			done <- err
			return
		}
		_, err := s.WriteTo(sink)
		done <- err
	})
	c, _ := dialEcho(t, h)
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 31)
	}
	if _, err := c.ReadFrom(tcpSource(t, payload)); err != nil { // one frame per record
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(payload); sink.n != size || !bytes.Equal(sink.h.Sum(nil), want[:]) {
		t.Fatalf("sink got %d bytes (or other bytes), want %d", sink.n, size)
	}
	frames := (size + slotPayload - 1) / slotPayload
	if sink.tries*2 > frames {
		t.Fatalf("%d frames reached the destination in %d writes; want fewer than half as many", frames, sink.tries)
	}
	t.Logf("%d frames, %d writes", frames, sink.tries)
}
