package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/ambitmesh/ambit/internal/relay/relaytest"
)

// slotBatch is one writeSlots call: a slot buffer and the payload bytes in it.
type slotBatch struct {
	buf []byte
	n   int
}

// layoutSlots lays data out in slot buffers of up to perCall payload bytes, each
// record's plaintext a 9-byte marker and up to slotPayload bytes of data, and returns
// them with the plaintext a TLS peer must read once they are sealed and written.
func layoutSlots(data []byte, perCall int) (batches []slotBatch, want []byte) {
	for len(data) > 0 {
		n := min(perCall, len(data))
		buf := make([]byte, ((n+slotPayload-1)/slotPayload)*slotLen)
		for i, off := 0, 0; off < n; i++ {
			p := min(slotPayload, n-off)
			h := buf[i*slotLen+recordHeaderLen:][:frameHeaderLen]
			copy(h, "frame-hdr")
			copy(slotData(buf, i), data[off:off+p])
			want = append(want, h...)
			want = append(want, data[off:off+p]...)
			off += p
		}
		batches = append(batches, slotBatch{buf, n})
		data = data[n:]
	}
	return batches, want
}

// Records sealed in place in slots read as ordinary TLS 1.3 records, in order after
// records written before them and across our key updates, with crypto/tls as the peer.
func TestRecordsSlotsInteropCryptoTLS(t *testing.T) {
	data := make([]byte, 2<<20+3)
	rand.Read(data)
	for _, tc := range []struct {
		name        string
		perCall     int
		updateAfter uint64
	}{
		{"bulk", slotsBulk * slotPayload, keyUpdateAfter},
		{"one partial record each", 1000, keyUpdateAfter},
		{"key updates inside a batch", slotsBulk*slotPayload - 7, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl, peer := recordPair(t, true)
			rl.keyUpdateAfter = tc.updateAfter
			first := rl.wk.secret
			batches, want := layoutSlots(data, tc.perCall)
			send := func() error {
				// A record written the ordinary way, left unflushed, must go first.
				if _, err := rl.Write([]byte("before")); err != nil {
					return err
				}
				for _, b := range batches {
					if err := rl.writeSlots(b.buf, b.n); err != nil {
						return err
					}
				}
				return nil
			}
			transfer(t, "slots -> crypto/tls", send, peer, []int{32 << 10}, append([]byte("before"), want...))
			if updated := !bytes.Equal(first, rl.wk.secret); updated != (tc.updateAfter < keyUpdateAfter) {
				t.Fatalf("write key updated: %v", updated)
			}
		})
	}
}

// tcpSource returns the reading end of a TCP connection into which payload is written
// and then half-closed.
func tcpSource(tb testing.TB, payload []byte) *net.TCPConn {
	tb.Helper()
	w, r := relaytest.TCPPair(tb)
	go func() {
		w.Write(payload)
		w.CloseWrite()
	}()
	return r
}

type countingSource struct {
	*net.TCPConn
	n *atomic.Int64
}

func (c countingSource) CountBytes(n int64) { c.n.Add(n) }

// readFromEcho sends src through c with ReadFrom, then END_STREAM, in its own
// goroutine; the returned channel reports how that went.
func readFromEcho(c *Conn, src io.Reader, size int) <-chan error {
	errc := make(chan error, 1)
	go func() {
		n, err := c.ReadFrom(src)
		if err == nil && n != int64(size) {
			err = fmt.Errorf("ReadFrom sent %d bytes, want %d", n, size)
		}
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	return errc
}

// expectEcho reads c to its end and fails unless it is want and the sender succeeded.
func expectEcho(t *testing.T, c *Conn, want []byte, errc <-chan error) {
	t.Helper()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%d bytes: read: %v", len(want), err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("%d bytes: %v", len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo of %d bytes differs from the %d sent", len(got), len(want))
	}
}

// ReadFrom a socket moves every byte, in order, through record slots (one slot while
// reads are small, bulk slots after), reports them to a byte counter, and falls back
// to ordinary writes for what the peer's windows do not take at once.
func TestStreamReadFromSocket(t *testing.T) { onLayers(t, testStreamReadFromSocket) }

func testStreamReadFromSocket(t *testing.T) {
	for _, size := range []int{1, slotPayload, slotPayload + 1, slotsBulk*slotPayload + 5, 9<<20 + 3} {
		c, _ := dialEcho(t, echoHandler)
		payload := make([]byte, size)
		rand.Read(payload)
		var counted atomic.Int64
		errc := readFromEcho(c, countingSource{tcpSource(t, payload), &counted}, size)
		expectEcho(t, c, payload, errc)
		if counted.Load() != int64(size) {
			t.Fatalf("%d bytes: CountBytes saw %d", size, counted.Load())
		}
	}
}

// When the windows take only part of what one read brought, the records that fit go
// out sealed in place and the rest as ordinary writes once the peer reads again.
func TestStreamReadFromSocketWindowBound(t *testing.T) {
	onLayers(t, testStreamReadFromSocketWindowBound)
}

func testStreamReadFromSocketWindowBound(t *testing.T) {
	release := make(chan struct{})
	c, _ := dialEcho(t, HandlerFunc(func(s *Stream) {
		if err := s.Accept(); err != nil {
			return
		}
		<-release // the client fills the stream window meanwhile
		io.Copy(s, s)
		s.CloseWrite()
	}))
	payload := make([]byte, streamWindow+3*slotsBulk*slotPayload)
	rand.Read(payload)
	errc := readFromEcho(c, tcpSource(t, payload), len(payload))
	eventually(t, "stream window used up", func() bool {
		c.c.mu.Lock()
		defer c.c.mu.Unlock()
		return c.sendWindow == 0
	})
	close(release)
	expectEcho(t, c, payload, errc)
}

// Short of window, sendSlots sends the whole slots the window covers and, once the
// window is back, the rest of the batch in one write: not one write per record, as
// when the rest went the copying way.
func TestSendSlotsShortWindow(t *testing.T) { onLayers(t, testSendSlotsShortWindow) }

func testSendSlotsShortWindow(t *testing.T) {
	got := make(chan []byte, 1)
	release := make(chan struct{})
	_, addr := startServer(t, HandlerFunc(func(s *Stream) {
		if err := s.Accept(); err != nil {
			got <- nil
			return
		}
		<-release // no credit comes back until the test has counted
		b, _ := io.ReadAll(s)
		got <- b
	}), nil)
	p, writes := writeCountingPool(t, nil)
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("x")); err != nil { // the stream is open, the settings are in
		t.Fatal(err)
	}
	// Leave three and a half slots of window.
	left := 3*slotPayload + slotPayload/2
	for {
		c.c.mu.Lock()
		w := min(c.sendWindow, c.c.sendWindow)
		c.c.mu.Unlock()
		if w <= int64(left) {
			break
		}
		if _, err := c.reserve(int(w)-left, false); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, slotsBulk*slotLen)
	want := []byte("x")
	for i := range slotsBulk {
		d := slotData(buf, i)
		rand.Read(d)
		want = append(want, d...)
	}
	before := writes.Load()
	done := make(chan error, 1)
	go func() { done <- c.sendSlots(buf, slotsBulk*slotPayload) }()
	eventually(t, "window used up", func() bool {
		c.c.mu.Lock()
		defer c.c.mu.Unlock()
		return c.sendWindow == 0 || c.c.sendWindow == 0
	})
	c.unreserve(slotsBulk * slotPayload) // as a WINDOW_UPDATE would
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Three whole slots; half a slot, the copying way; after the update its other half
	// and then the other 28 slots in one batch. (crypto/tls writes each record of its
	// own with a system call of its own.)
	if n := writes.Load() - before; n > 6 && layerOf(t) == RecordsOwn {
		t.Errorf("%d socket writes for %d records, want at most 6", n, slotsBulk)
	}
	close(release)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-got, want) {
		t.Fatal("the server received different bytes")
	}
}

// ReadFrom a reader that is not a socket copies through a buffer, like io.Copy.
func TestStreamReadFromReader(t *testing.T) { onLayers(t, testStreamReadFromReader) }

func testStreamReadFromReader(t *testing.T) {
	c, _ := dialEcho(t, echoHandler)
	payload := make([]byte, 1<<20+17)
	rand.Read(payload)
	expectEcho(t, c, payload, readFromEcho(c, bytes.NewReader(payload), len(payload)))
}
