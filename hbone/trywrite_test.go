package hbone

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
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

// sinkWriterV is a sinkWriter that also takes several buffers per call, as a socket's
// writev does; take applies to their total.
type sinkWriterV struct {
	*sinkWriter
	calls, gathered int // TryWriteBuffers calls, and those given more than one buffer
}

func (w *sinkWriterV) TryWriteBuffers(bufs [][]byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	if len(bufs) > 1 {
		w.gathered++
	}
	if len(bufs) > maxGather {
		return 0, fmt.Errorf("%d buffers in one call, more than %d", len(bufs), maxGather)
	}
	w.tries++
	if w.tryErr != nil {
		return 0, w.tryErr
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	k := min(w.take(total), total)
	if k > 0 {
		w.tookSome++
	}
	n := k
	for _, b := range bufs {
		m := min(len(b), k)
		w.h.Write(b[:m])
		k -= m
	}
	w.n += int64(n)
	return n, nil
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
func TestWriteToDirectDelivery(t *testing.T) { onLayers(t, testWriteToDirectDelivery) }

func testWriteToDirectDelivery(t *testing.T) {
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
		for _, vec := range []bool{false, true} {
			name := tc.name
			if vec {
				name += ", gathering"
			}
			t.Run(name, func(t *testing.T) {
				c, _ := dialEcho(t, echoHandler)
				sink := &sinkWriter{h: sha256.New(), take: tc.take, tryErr: tc.tryErr}
				var dst io.Writer = sink
				sv := &sinkWriterV{sinkWriter: sink}
				if vec {
					dst = sv
				}
				sent := make(chan []byte, 1)
				go func() { sent <- sendRandom(t, c, size, 3) }()
				n, err := c.WriteTo(dst)
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
}

// The read loop hands every chunk it holds to a BuffersTryWriter in one call, and a
// short write leaves the rest where it ended, inside any chunk.
func TestDeliverGathersChunks(t *testing.T) { onLayers(t, testDeliverGathersChunks) }

func testDeliverGathersChunks(t *testing.T) {
	c, _ := dialEcho(t, echoHandler)
	s := c.stream // idle: the peer sends nothing, so only this test touches the buffer
	sink := &sinkWriterV{sinkWriter: &sinkWriter{h: sha256.New()}}
	var want []byte
	s.mu.Lock()
	for i, fill := range []int{3000, 32 << 10, 50000} {
		b := getBuf(fill)
		for j := range fill {
			b = append(b, byte(i*7+j%251))
		}
		want = append(want, b...)
		s.chunks = append(s.chunks, b)
		s.rlen += len(b)
	}
	s.roff, s.rlen = 100, s.rlen-100
	want = want[100:]
	s.sink, s.parked, s.writingOut = sink, true, true
	s.mu.Unlock()

	sink.take = func(n int) int { return n - 5 }
	s.deliver()
	s.mu.Lock()
	if sink.calls != 1 || sink.gathered != 1 || len(s.chunks) != 1 || s.rlen != 5 || s.roff != 50000-5 {
		t.Fatalf("after a short gathered write: %d calls (%d gathered), %d chunks left, rlen %d, roff %d; want 1 (1), 1, 5, %d",
			sink.calls, sink.gathered, len(s.chunks), s.rlen, s.roff, 50000-5)
	}
	s.writingOut = true
	s.mu.Unlock()
	sink.take = func(n int) int { return n }
	s.deliver()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rlen != 0 || len(s.chunks) != 0 || sink.n != int64(len(want)) {
		t.Fatalf("after the rest: rlen %d, %d chunks, sink has %d bytes; want 0, 0, %d", s.rlen, len(s.chunks), sink.n, len(want))
	}
	if h := sha256.Sum256(want); !bytes.Equal(sink.h.Sum(nil), h[:]) {
		t.Fatal("delivered bytes differ")
	}
}

// TestWriteToSocketSlowReader delivers into a real TCP socket whose reader is slow, so
// non-blocking writes meet a full socket buffer and WriteTo takes over.
func TestWriteToSocketSlowReader(t *testing.T) { onLayers(t, testWriteToSocketSlowReader) }

func testWriteToSocketSlowReader(t *testing.T) {
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
func TestDirectDeliveryCoalescesFrames(t *testing.T) { onLayers(t, testDirectDeliveryCoalescesFrames) }

func testDirectDeliveryCoalescesFrames(t *testing.T) {
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
	// crypto/tls reads what it needs for the record at hand, little more: the own
	// record layer's bulk reads are what bring many records per socket read.
	if sink.tries*2 > frames && layerOf(t) == RecordsOwn {
		t.Fatalf("%d frames reached the destination in %d writes; want fewer than half as many", frames, sink.tries)
	}
	t.Logf("%d frames, %d writes", frames, sink.tries)
}
