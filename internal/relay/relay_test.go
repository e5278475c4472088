package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/internal/relay/relaytest"
	"github.com/ambitmesh/ambit/internal/sockio"
)

// pumping is a Pump under way.
type pumping struct {
	sent, recv atomic.Int64
	done       chan error
}

// startPump pumps down<->up in a goroutine.
func startPump(r *Relay, down, up net.Conn) *pumping {
	p := &pumping{done: make(chan error, 1)}
	go func() { p.done <- r.Pump(down, up, &p.sent, &p.recv) }()
	return p
}

// pipeConn hides the TCP type so the buffered path is exercised too.
type pipeConn struct{ net.Conn }

func (p pipeConn) CloseWrite() error { return p.Conn.(*net.TCPConn).CloseWrite() }

// writerToConn stands in for a tunnel stream that only writes itself out (io.WriterTo):
// not a Socket. Its WriteTo hands data to the destination's TryWriter first, as an
// HBONE stream's read loop does, in two buffers at once where it takes them (a burst
// of receive chunks), and writes the rest blocking.
type writerToConn struct {
	net.Conn // the hidden *net.TCPConn
}

func (c writerToConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

func (c writerToConn) WriteTo(w io.Writer) (int64, error) {
	tw, _ := w.(TryWriter)
	bw, _ := w.(BuffersTryWriter)
	var total int64
	buf := make([]byte, 7000)
	for {
		n, err := c.Conn.Read(buf)
		if n > 0 {
			var k int
			var werr error
			switch {
			case bw != nil:
				k, werr = bw.TryWriteBuffers([][]byte{buf[:n/2], buf[n/2 : n]})
			case tw != nil:
				k, werr = tw.TryWrite(buf[:n])
			}
			if werr == nil && k < n {
				_, werr = w.Write(buf[k:n])
			}
			if werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// fakeStream stands in for an HBONE stream (a Stream): it also copies itself out
// asynchronously, and its ReadFrom reports the bytes it sent through CountBytes.
type fakeStream struct{ writerToConn }

func newFakeStream(c *net.TCPConn) fakeStream { return fakeStream{writerToConn{c}} }

func (s fakeStream) WriteToAsync(w io.Writer, done func(int64, error)) {
	go func() { done(s.WriteTo(w)) }()
}

func (s fakeStream) ReadFrom(r io.Reader) (int64, error) {
	bc, _ := r.(interface{ CountBytes(int64) })
	var total int64
	buf := make([]byte, 5000)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, err := s.Conn.Write(buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
			if bc != nil {
				bc.CountBytes(int64(n))
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// relays are the two set-ups a caller may use: with direct non-blocking writes into
// sockets, and the zero Relay.
var relays = []struct {
	name string
	r    *Relay
}{{"nonblocking", &Relay{NonBlocking: sockio.NonBlocking}}, {"zero", &Relay{}}}

// TestHalfClose: the shutdown sends FIN and leaves the other direction open, for plain
// and counted sockets; a socket already closed is not an error (the other direction
// closed both ends first), a socket the peer reset is.
func TestHalfClose(t *testing.T) {
	tests := []struct {
		name    string
		wrap    func(*net.TCPConn) net.Conn
		prepare func(t *testing.T, c, peer *net.TCPConn)
		wantErr bool
	}{
		{name: "tcp", wrap: func(c *net.TCPConn) net.Conn { return c }},
		{name: "counted", wrap: func(c *net.TCPConn) net.Conn { return countedConn{c, new(atomic.Int64)} }},
		{name: "buffered", wrap: func(c *net.TCPConn) net.Conn { return pipeConn{c} }},
		{
			name:    "closed",
			wrap:    func(c *net.TCPConn) net.Conn { return c },
			prepare: func(t *testing.T, c, _ *net.TCPConn) { c.Close() },
		},
		{
			name: "reset by peer",
			wrap: func(c *net.TCPConn) net.Conn { return c },
			prepare: func(t *testing.T, c, peer *net.TCPConn) {
				peer.SetLinger(0)
				peer.Close()
				// Wait for the RST: a read fails once it has arrived.
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err == nil {
					t.Fatal("read after the peer's reset succeeded")
				}
			},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, peer := relaytest.TCPPair(t)
			if tt.prepare != nil {
				tt.prepare(t, c, peer)
			}
			err := halfClose(tt.wrap(c))
			if tt.wantErr {
				if err == nil {
					t.Fatal("halfClose succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("halfClose: %v", err)
			}
			if tt.prepare != nil {
				return
			}
			peer.SetDeadline(time.Now().Add(5 * time.Second))
			if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("peer read %d, %v; want EOF", n, err)
			}
			// The other direction stays open.
			if _, err := peer.Write([]byte("z")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 'z' {
				t.Fatalf("read after half-close: %q, %v", b, err)
			}
		})
	}
}

// TestPumpHalfClose: a half-close crosses the relay each way, the other direction
// keeps working, and every byte is counted, whatever the two ends are.
func TestPumpHalfClose(t *testing.T) {
	tests := []struct {
		name     string
		down, up func(*net.TCPConn) net.Conn
	}{
		{"splice", asIs, asIs},
		{"buffered", wrapPipe, wrapPipe},
		{"socket to stream", asIs, wrapStream},
		{"stream to socket", wrapStream, asIs},
		{"socket to writer-to", asIs, wrapWriterTo},
	}
	for _, rl := range relays {
		for _, tt := range tests {
			t.Run(rl.name+"/"+tt.name, func(t *testing.T) {
				client, down := relaytest.TCPPair(t)
				up, server := relaytest.TCPPair(t)
				p := startPump(rl.r, tt.down(down), tt.up(up))

				req := bytes.Repeat([]byte("q"), 100000)
				if _, err := client.Write(req); err != nil {
					t.Fatal(err)
				}
				client.CloseWrite()
				got, err := io.ReadAll(server) // EOF arrives only through the half-close
				if err != nil || !bytes.Equal(got, req) {
					t.Fatalf("server read %d bytes, err %v", len(got), err)
				}
				// The server can still answer after the client half-closed.
				resp := []byte("answer after half-close")
				if _, err := server.Write(resp); err != nil {
					t.Fatal(err)
				}
				server.CloseWrite()
				got, err = io.ReadAll(client)
				if err != nil || !bytes.Equal(got, resp) {
					t.Fatalf("client read %q, err %v", got, err)
				}
				select {
				case err := <-p.done:
					if err != nil {
						t.Fatalf("pump: %v", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("pump did not finish after both halves closed")
				}
				if p.sent.Load() != int64(len(req)) || p.recv.Load() != int64(len(resp)) {
					t.Fatalf("counted %d/%d bytes, want %d/%d", p.sent.Load(), p.recv.Load(), len(req), len(resp))
				}
			})
		}
	}
}

func asIs(c *net.TCPConn) net.Conn         { return c }
func wrapPipe(c *net.TCPConn) net.Conn     { return pipeConn{c} }
func wrapStream(c *net.TCPConn) net.Conn   { return newFakeStream(c) }
func wrapWriterTo(c *net.TCPConn) net.Conn { return writerToConn{c} }

func TestPumpAbortOnReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(*net.TCPConn) net.Conn
	}{
		{"sockets", asIs},
		{"async stream", wrapStream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, down := relaytest.TCPPair(t)
			up, server := relaytest.TCPPair(t)
			p := startPump(&Relay{NonBlocking: sockio.NonBlocking}, down, tc.up(up))
			// An abortive close on one side must tear down the other promptly.
			server.SetLinger(0)
			server.Close()
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(client); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("client was not closed after the server reset")
			}
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				t.Fatal("pump did not finish after a reset")
			}
		})
	}
}

// TestPumpCountsDirectWrites: bytes a stream writes through the relay's non-blocking
// writer reach the socket and are counted.
func TestPumpCountsDirectWrites(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(*net.TCPConn) net.Conn
	}{{"writer-to", wrapWriterTo}, {"async stream", wrapStream}} {
		t.Run(tc.name, func(t *testing.T) {
			client, down := relaytest.TCPPair(t)
			up, server := relaytest.TCPPair(t)
			p := startPump(&Relay{NonBlocking: sockio.NonBlocking}, down, tc.up(up))
			resp := make([]byte, 300000) // not one repeated byte: order matters
			for i := range resp {
				resp[i] = byte(i % 251)
			}
			go func() {
				server.Write(resp)
				server.CloseWrite()
			}()
			got, err := io.ReadAll(client)
			if err != nil || !bytes.Equal(got, resp) {
				t.Fatalf("client read %d bytes, err %v", len(got), err)
			}
			client.CloseWrite()
			if err := <-p.done; err != nil {
				t.Fatalf("pump: %v", err)
			}
			if p.recv.Load() != int64(len(resp)) {
				t.Fatalf("counted %d bytes, want %d", p.recv.Load(), len(resp))
			}
		})
	}
}

// TestPumpAsync: with a stream on one side, the calling goroutine is free once its own
// direction ended (the client's half-close), and done runs once, after the server's
// answer and both closes, with the bytes counted.
func TestPumpAsync(t *testing.T) {
	client, down := relaytest.TCPPair(t)
	up, server := relaytest.TCPPair(t)
	var sent, recv atomic.Int64
	var calls atomic.Int32
	done := make(chan error, 2)
	returned := make(chan struct{})
	r := &Relay{NonBlocking: sockio.NonBlocking}
	go func() {
		r.PumpAsync(down, newFakeStream(up), &sent, &recv, func(err error) {
			calls.Add(1)
			done <- err
		})
		close(returned)
	}()
	req := bytes.Repeat([]byte("q"), 100000)
	client.Write(req)
	client.CloseWrite()
	if got, err := io.ReadAll(server); err != nil || !bytes.Equal(got, req) {
		t.Fatalf("server read %d bytes, err %v", len(got), err)
	}
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("PumpAsync did not return after its own direction ended")
	}
	resp := bytes.Repeat([]byte("r"), 300000)
	server.Write(resp)
	server.CloseWrite()
	if got, err := io.ReadAll(client); err != nil || !bytes.Equal(got, resp) {
		t.Fatalf("client read %d bytes, err %v", len(got), err)
	}
	if err := <-done; err != nil {
		t.Fatalf("pump: %v", err)
	}
	if _, err := down.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write to the pod side after done: %v, want it closed", err)
	}
	if n := calls.Load(); n != 1 || sent.Load() != int64(len(req)) || recv.Load() != int64(len(resp)) {
		t.Fatalf("done ran %d times, counted %d/%d bytes, want once and %d/%d", n, sent.Load(), recv.Load(), len(req), len(resp))
	}
}

// convertible stands for a redirect.Socket: a socket that can become a *net.TCPConn.
type convertible struct {
	net.Conn
	tc  *net.TCPConn
	err error
}

func (c convertible) TCPConn() (*net.TCPConn, error) { return c.tc, c.err }

// Between two sockets, sockets that can become *net.TCPConn do (for splice); next to a
// stream, or when the conversion fails, nothing changes.
func TestSpliceable(t *testing.T) {
	a, b := relaytest.TCPPair(t)
	conv := convertible{pipeConn{a}, a, nil}
	broken := convertible{pipeConn{a}, nil, errors.New("no")}
	stream := newFakeStream(b)
	tests := []struct {
		name         string
		in1, in2     net.Conn
		want1, want2 net.Conn
	}{
		{"two sockets", conv, b, a, b},
		{"conversion fails", broken, b, broken, b},
		{"stream and socket", stream, conv, stream, conv},
		{"socket and stream", conv, stream, conv, stream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got1, got2 := Spliceable(tt.in1, tt.in2)
			if got1 != tt.want1 || got2 != tt.want2 {
				t.Fatalf("Spliceable = %T, %T; want %T, %T", got1, got2, tt.want1, tt.want2)
			}
		})
	}
}

// A tunnel stream is known by its capabilities: the fake stream is one, a socket, a
// stream that only writes itself out, and a plain net.Conn are not.
func TestIsStream(t *testing.T) {
	a, _ := relaytest.TCPPair(t)
	for _, tt := range []struct {
		name string
		c    net.Conn
		want bool
	}{
		{"stream", newFakeStream(a), true},
		{"tcp", a, false},
		{"writer-to", writerToConn{a}, false},
		{"plain", pipeConn{a}, false},
	} {
		if got := isStream(tt.c); got != tt.want {
			t.Errorf("%s: isStream = %v, want %v", tt.name, got, tt.want)
		}
	}
}
