package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"sync/atomic"
	"testing"
)

// writeSlotsPlain lays data out in record slots, each record's plaintext a 9-byte
// marker and up to slotPayload bytes of data, seals them in place and writes them; it
// returns the plaintext a TLS peer must read.
func writeSlotsPlain(rl *records, data []byte, perCall int) ([]byte, error) {
	var want []byte
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
		if err := rl.writeSlots(buf, n); err != nil {
			return want, err
		}
		data = data[n:]
	}
	return want, nil
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
			var want []byte
			send := func() error {
				// A record written the ordinary way, left unflushed, must go first.
				if _, err := rl.Write([]byte("before")); err != nil {
					return err
				}
				w, err := writeSlotsPlain(rl, data, tc.perCall)
				want = w
				return err
			}
			werr := make(chan error, 1)
			go func() { werr <- send() }()
			total := len("before") + len(data) + frameHeaderLen*recordsFor(len(data), tc.perCall)
			got, err := io.ReadAll(io.LimitReader(peer, int64(total)))
			if err != nil {
				t.Fatal(err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, append([]byte("before"), want...)) {
				t.Fatal("crypto/tls read different bytes")
			}
			if updated := !bytes.Equal(first, rl.wk.secret); updated != (tc.updateAfter < keyUpdateAfter) {
				t.Fatalf("write key updated: %v", updated)
			}
		})
	}
}

// recordsFor is how many slot records carry n bytes written perCall at a time.
func recordsFor(n, perCall int) int {
	recs := 0
	for n > 0 {
		k := min(perCall, n)
		recs += (k + slotPayload - 1) / slotPayload
		n -= k
	}
	return recs
}

// tcpSource returns the reading end of a TCP connection into which payload is written
// and then half-closed.
func tcpSource(tb testing.TB, payload []byte) *net.TCPConn {
	tb.Helper()
	l, err := net.Listen("tcp", testAddr+":0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	w, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r, err := l.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { w.Close(); r.Close() })
	go func() {
		w.Write(payload)
		w.(*net.TCPConn).CloseWrite()
	}()
	return r.(*net.TCPConn)
}

type countingSource struct {
	*net.TCPConn
	n *atomic.Int64
}

func (c countingSource) CountBytes(n int64) { c.n.Add(n) }

// ReadFrom a socket moves every byte, in order, through record slots (one slot while
// reads are small, bulk slots after), reports them to a byte counter, and falls back
// to ordinary writes for what the peer's windows do not take at once.
func TestStreamReadFromSocket(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, nil)
	for _, size := range []int{1, slotPayload, slotPayload + 1, slotsBulk*slotPayload + 5, 9<<20 + 3} {
		payload := make([]byte, size)
		rand.Read(payload)
		c, err := p.Dial(context.Background(), testReq(addr))
		if err != nil {
			t.Fatal(err)
		}
		var counted atomic.Int64
		werr := make(chan error, 1)
		go func() {
			n, err := c.ReadFrom(countingSource{tcpSource(t, payload), &counted})
			if err == nil && n != int64(size) {
				err = io.ErrShortWrite
			}
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		h := sha256.New()
		got, err := io.Copy(h, c)
		if err != nil {
			t.Fatalf("%d bytes: read: %v", size, err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("%d bytes: ReadFrom: %v", size, err)
		}
		if want := sha256.Sum256(payload); got != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("%d bytes: echo of %d bytes differs", size, got)
		}
		if counted.Load() != int64(size) {
			t.Fatalf("%d bytes: CountBytes saw %d", size, counted.Load())
		}
		c.Close()
	}
}

// When the windows take only part of what one read brought, the records that fit go
// out sealed in place and the rest as ordinary writes once the peer reads again.
func TestStreamReadFromSocketWindowBound(t *testing.T) {
	release := make(chan struct{})
	h := HandlerFunc(func(s *Stream) {
		if err := s.Accept(); err != nil {
			return
		}
		<-release // the client fills the stream window meanwhile
		io.Copy(s, s)
		s.CloseWrite()
	})
	_, addr := startServer(t, h, nil)
	p := newTestPool(t, nil)
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := make([]byte, streamWindow+3*slotsBulk*slotPayload)
	rand.Read(payload)
	src := tcpSource(t, payload)
	werr := make(chan error, 1)
	go func() {
		_, err := c.ReadFrom(src)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	eventually(t, "stream window used up", func() bool {
		c.c.mu.Lock()
		defer c.c.mu.Unlock()
		return c.sendWindow == 0
	})
	close(release)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo of %d bytes differs from the %d sent", len(got), len(payload))
	}
}

// ReadFrom a reader that is not a socket copies through a buffer, like io.Copy.
func TestStreamReadFromReader(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, nil)
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := make([]byte, 1<<20+17)
	rand.Read(payload)
	werr := make(chan error, 1)
	go func() {
		n, err := c.ReadFrom(bytes.NewReader(payload))
		if err == nil && n != int64(len(payload)) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("echo differs")
	}
}
