package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"

	"golang.org/x/net/http2/hpack"
	"golang.org/x/net/nettest"
)

// makePipe builds a real client/server pair over TLS on loopback, on t's record
// layer: c1 is the client *Conn, c2 the server *Stream.
func makePipe(t *testing.T) nettest.MakePipe {
	return func() (c1, c2 net.Conn, stop func(), err error) {
		streams := make(chan *Stream, 1)
		release := make(chan struct{})
		var relOnce sync.Once
		h := HandlerFunc(func(s *Stream) {
			if err := s.Accept(); err != nil {
				return
			}
			streams <- s
			<-release
		})
		l, err := net.Listen("tcp", testAddr+":0")
		if err != nil {
			return nil, nil, nil, err
		}
		srv, err := NewServer(ServerConfig{TLSConfig: theCA(t).serverTLS(t, idServer), Handler: h, Records: layerOf(t)})
		if err != nil {
			return nil, nil, nil, err
		}
		served := make(chan struct{})
		go func() { defer close(served); srv.Serve(l) }()
		pool, err := NewPool(ClientConfig{TLSConfig: testClientTLS(t), Records: layerOf(t)})
		if err != nil {
			return nil, nil, nil, err
		}
		shutdown := func() {
			relOnce.Do(func() { close(release) })
			pool.Close()
			srv.Close()
			<-served
		}
		cc, err := pool.Dial(context.Background(), testReq(l.Addr().String()))
		if err != nil {
			shutdown()
			return nil, nil, nil, err
		}
		sc := <-streams
		return cc, sc, func() { cc.Close(); sc.Close(); shutdown() }, nil
	}
}

func TestConnNettest(t *testing.T) { onLayers(t, testConnNettest) }

func testConnNettest(t *testing.T) {
	nettest.TestConn(t, makePipe(t))
}

func dialEcho(t *testing.T, h Handler) (*Conn, *Pool) {
	t.Helper()
	_, addr := startServer(t, h, nil)
	p := newTestPool(t, nil)
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, p
}

func TestHalfCloseClientFirst(t *testing.T) { onLayers(t, testHalfCloseClientFirst) }

func testHalfCloseClientFirst(t *testing.T) {
	got := make(chan string, 1)
	h := HandlerFunc(func(s *Stream) {
		s.Accept()
		b, err := io.ReadAll(s) // ends with the client's END_STREAM
		if err != nil {
			t.Errorf("server read: %v", err)
		}
		got <- string(b)
		if _, err := s.Write([]byte("reply after your EOF")); err != nil {
			t.Errorf("server write after client CloseWrite: %v", err)
		}
		s.CloseWrite()
	})
	c, _ := dialEcho(t, h)
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "request" {
		t.Fatalf("server got %q", s)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "reply after your EOF" {
		t.Fatalf("client got %q, %v", b, err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write after CloseWrite succeeded")
	}
}

func TestHalfCloseServerFirst(t *testing.T) { onLayers(t, testHalfCloseServerFirst) }

func testHalfCloseServerFirst(t *testing.T) {
	got := make(chan string, 1)
	h := HandlerFunc(func(s *Stream) {
		s.Accept()
		s.Write([]byte("banner"))
		if err := s.CloseWrite(); err != nil {
			t.Errorf("server CloseWrite: %v", err)
		}
		b, err := io.ReadAll(s)
		if err != nil {
			t.Errorf("server read after its CloseWrite: %v", err)
		}
		got <- string(b)
	})
	c, _ := dialEcho(t, h)
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "banner" {
		t.Fatalf("client got %q, %v", b, err)
	}
	if _, err := c.Write([]byte("still writing")); err != nil {
		t.Fatalf("client write after server EOF: %v", err)
	}
	c.CloseWrite()
	if s := <-got; s != "still writing" {
		t.Fatalf("server got %q", s)
	}
}

func TestCloseReadDiscards(t *testing.T) { onLayers(t, testCloseReadDiscards) }

func testCloseReadDiscards(t *testing.T) {
	finished := make(chan struct{})
	h := HandlerFunc(func(s *Stream) {
		defer close(finished)
		s.Accept()
		// Far more than the windows: must not block after the client's CloseRead.
		buf := make([]byte, 1<<20)
		for i := 0; i < 32; i++ {
			if _, err := s.Write(buf); err != nil {
				t.Errorf("server write: %v", err)
				return
			}
		}
		s.CloseWrite()
		io.Copy(io.Discard, s)
	})
	c, _ := dialEcho(t, h)
	if err := c.CloseRead(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read after CloseRead = %d, %v", n, err)
	}
	c.CloseWrite()
	<-finished
}

func TestLargeTransfer(t *testing.T) { onLayers(t, testLargeTransfer) }

func testLargeTransfer(t *testing.T) {
	const size = 64 << 20
	c, _ := dialEcho(t, echoHandler)
	sent := make(chan []byte, 1)
	go func() { sent <- sendRandom(t, c, size, 7) }()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	want := <-sent
	if n != size {
		t.Fatalf("echoed %d bytes, want %d", n, size)
	}
	if !bytes.Equal(h.Sum(nil), want) {
		t.Fatal("sha256 of echoed data differs")
	}
}

func TestStreamErrorsAfterClose(t *testing.T) { onLayers(t, testStreamErrorsAfterClose) }

func testStreamErrorsAfterClose(t *testing.T) {
	c, _ := dialEcho(t, echoHandler)
	c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestRequestHeadersIndexing checks which CONNECT headers enter the HPACK dynamic
// tables: the ones repeated across requests do, the per-request ones (forwarded,
// traceparent) go as never-indexed literals.
func TestRequestHeadersIndexing(t *testing.T) {
	req := Request{
		Authority: "198.18.0.10:8080",
		Forwarded: netip.MustParseAddrPort("198.18.1.10:40000"),
		Host:      "echo.mesh.svc.cluster.local",
		Baggage:   "k8s.namespace.name=mesh",
	}
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	got := map[string]bool{} // name -> sent as never-indexed
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got[f.Name] = f.Sensitive })
	for port := range uint16(3) { // the second and third requests find the repeated fields indexed
		buf.Reset()
		req.Forwarded = netip.AddrPortFrom(req.Forwarded.Addr(), 40000+port)
		for _, f := range requestHeaders(req, false) {
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := dec.Write(buf.Bytes()); err != nil {
			t.Fatalf("decode request %d: %v", port, err)
		}
	}
	for _, tt := range []struct {
		name         string
		neverIndexed bool
	}{
		{":method", false}, {":authority", false}, {"baggage", false},
		{"forwarded", true}, {"traceparent", true},
	} {
		sensitive, ok := got[tt.name]
		if !ok {
			t.Errorf("%s: not sent", tt.name)
			continue
		}
		if sensitive != tt.neverIndexed {
			t.Errorf("%s: never-indexed %v, want %v", tt.name, sensitive, tt.neverIndexed)
		}
	}
}

// gatedConn passes reads through until armed, then lets budget more bytes through and
// blocks the next read (signalling blocked) until release is closed.
type gatedConn struct {
	net.Conn
	mu      sync.Mutex
	armed   bool
	budget  int
	blocked chan struct{}
	release chan struct{}
}

func (g *gatedConn) arm(budget int) {
	g.mu.Lock()
	g.armed, g.budget = true, budget
	g.mu.Unlock()
}

func (g *gatedConn) Read(p []byte) (int, error) {
	g.mu.Lock()
	if g.armed && g.budget == 0 {
		g.armed = false
		g.mu.Unlock()
		close(g.blocked)
		<-g.release
		return g.Conn.Read(p)
	}
	if g.armed {
		p = p[:min(len(p), g.budget)]
	}
	g.mu.Unlock()
	n, err := g.Conn.Read(p)
	g.mu.Lock()
	if g.armed {
		g.budget -= n
	}
	g.mu.Unlock()
	return n, err
}

// CloseRead while the read loop is in the middle of a DATA frame: the rest of that
// frame and everything after it are dropped, never read.
func TestCloseReadMidFrame(t *testing.T) { onLayers(t, testCloseReadMidFrame) }

func testCloseReadMidFrame(t *testing.T) {
	start, wrote := make(chan struct{}), make(chan struct{})
	_, addr := startServer(t, HandlerFunc(func(s *Stream) {
		defer close(wrote)
		s.Accept()
		<-start
		buf := make([]byte, 1<<20) // frames of 256 KiB, read in chunks of 128 KiB
		for range 16 {
			if _, err := s.Write(buf); err != nil {
				t.Errorf("server write: %v", err)
				return
			}
		}
		s.CloseWrite()
	}), nil)
	gate := &gatedConn{blocked: make(chan struct{}), release: make(chan struct{})}
	p := newTestPool(t, func(cfg *ClientConfig) {
		cfg.Dial = func(ctx context.Context, network, a string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, a)
			gate.Conn = nc
			return gate, err
		}
	})
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gate.arm(64 << 10) // into the first DATA frame's first chunk
	close(start)
	<-gate.blocked
	if err := c.CloseRead(); err != nil {
		t.Fatal(err)
	}
	close(gate.release)
	<-wrote // the server wrote all of it: its windows were returned
	if n, err := c.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read after CloseRead mid-frame = %d, %v, want 0, EOF", n, err)
	}
}
