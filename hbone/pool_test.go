package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoolConcurrentStreams(t *testing.T) { onLayers(t, testPoolConcurrentStreams) }

func testPoolConcurrentStreams(t *testing.T) {
	const n = 500
	_, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, func(c *ClientConfig) { c.MaxStreamsPerConn = 100 })
	conns := make([]*Conn, n)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Dial(context.Background(), testReq(addr))
			if err != nil {
				t.Errorf("dial %d: %v", i, err)
				return
			}
			conns[i] = c
			msg := []byte{byte(i), byte(i >> 8), 1, 2, 3}
			if _, err := c.Write(msg); err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != string(msg) {
				t.Errorf("echo %d: %q %v", i, buf, err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// All 500 open at once: 5 shared connections of 100 streams each.
	if st := p.Stats(); st.Conns != n/100 || st.Streams != n {
		t.Fatalf("stats with %d open streams = %+v, want 5 conns", n, st)
	}
	for _, c := range conns {
		c.CloseWrite()
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	eventually(t, "streams drained", func() bool { return p.Stats().Streams == 0 })
	// Reuse: a new stream goes over an existing connection.
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if st := p.Stats(); st.Conns != n/100 {
		t.Fatalf("after reuse stats = %+v", st)
	}
}

func TestPoolSequentialReuse(t *testing.T) { onLayers(t, testPoolSequentialReuse) }

func testPoolSequentialReuse(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, nil)
	for i := 0; i < 20; i++ {
		c, err := p.Dial(context.Background(), testReq(addr))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hi"))
		c.CloseWrite()
		io.ReadAll(c)
		c.Close()
	}
	if st := p.Stats(); st.Conns != 1 {
		t.Fatalf("stats = %+v, want 1 conn", st)
	}
	// A different key (destination identity) gets its own connection...
	req := testReq(addr)
	req.Src = idOther
	c, err := p.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st := p.Stats(); st.Conns != 2 {
		t.Fatalf("stats = %+v, want 2 conns", st)
	}
	// ...and a wrong expected destination identity fails the handshake.
	req.Dst = idOther
	if _, err := p.Dial(context.Background(), req); err == nil {
		t.Fatal("dial with wrong destination identity succeeded")
	}
}

func TestPoolHonoursServerMaxConcurrentStreams(t *testing.T) {
	onLayers(t, testPoolHonoursServerMaxConcurrentStreams)
}

func testPoolHonoursServerMaxConcurrentStreams(t *testing.T) {
	_, addr := startServer(t, echoHandler, func(c *ServerConfig) { c.MaxConcurrentStreams = 3 })
	// No spreading: full connections alone decide when another one opens.
	p := newTestPool(t, func(c *ClientConfig) { c.ConnsPerDest = 1 })
	var conns []*Conn
	for i := 0; i < 7; i++ {
		c, err := p.Dial(context.Background(), testReq(addr))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if st := p.Stats(); st.Conns != 3 || st.Streams != 7 {
		t.Fatalf("stats = %+v, want 3 conns 7 streams", st)
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestPoolIdleTimeout(t *testing.T) { onLayers(t, testPoolIdleTimeout) }

func testPoolIdleTimeout(t *testing.T) {
	// The connection's timer sleeps until its next keepalive check (or an hour
	// without keepalives); the last stream's end must bring the idle close forward.
	for _, tc := range []struct {
		name string
		ping time.Duration
	}{
		{"keepalive", 0},
		{"no keepalive", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, echoHandler, nil)
			p := newTestPool(t, func(c *ClientConfig) {
				c.IdleTimeout = 50 * time.Millisecond
				c.PingInterval = tc.ping
			})
			c, err := p.Dial(context.Background(), testReq(addr))
			if err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Conns != 1 {
				t.Fatalf("stats = %+v", st)
			}
			eventually(t, "timer armed while the stream is open", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				for hc := range p.keyOf {
					hc.mu.Lock()
					defer hc.mu.Unlock()
					return !hc.timerAt.IsZero()
				}
				return false
			})
			c.Close()
			eventually(t, "idle connection closed", func() bool { return p.Stats().Conns == 0 })
			// The pool dials again afterwards.
			c, err = p.Dial(context.Background(), testReq(addr))
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
}

// freezeProxy relays TCP and can stop forwarding in both directions, like a
// peer that hangs without closing.
type freezeProxy struct {
	l      net.Listener
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	l, err := net.Listen("tcp", testAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	fp := &freezeProxy{l: l}
	fp.wg.Add(1)
	go func() {
		defer fp.wg.Done()
		for {
			a, err := l.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				a.Close()
				continue
			}
			fp.mu.Lock()
			fp.conns = append(fp.conns, a, b)
			fp.mu.Unlock()
			fp.wg.Add(2)
			go fp.pump(a, b)
			go fp.pump(b, a)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		fp.mu.Lock()
		for _, c := range fp.conns {
			c.Close()
		}
		fp.mu.Unlock()
		fp.wg.Wait()
	})
	return fp
}

func (fp *freezeProxy) pump(dst, src net.Conn) {
	defer fp.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for fp.frozen.Load() {
			// Hold the bytes, read nothing more: the peer looks dead.
			if _, err := dst.Write(nil); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func TestPoolDeadPeerPingTimeout(t *testing.T) { onLayers(t, testPoolDeadPeerPingTimeout) }

func testPoolDeadPeerPingTimeout(t *testing.T) {
	_, addr := startServer(t, echoHandler, func(c *ServerConfig) { c.PingInterval = -1 })
	fp := startFreezeProxy(t, addr)
	p := newTestPool(t, func(c *ClientConfig) {
		c.PingInterval = 50 * time.Millisecond
		c.PingTimeout = 100 * time.Millisecond
	})
	c, err := p.Dial(context.Background(), testReq(fp.l.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	fp.frozen.Store(true)
	// The blocked Read ends with the ping-timeout connection error.
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, errPingTimeout) {
		t.Fatalf("Read on frozen peer: %v, want ping timeout", err)
	}
	eventually(t, "dead connection removed", func() bool { return p.Stats().Conns == 0 })
	fp.frozen.Store(false)
}

func TestServerShutdownGraceful(t *testing.T) { onLayers(t, testServerShutdownGraceful) }

func testServerShutdownGraceful(t *testing.T) {
	srv, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, nil)
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	// The active stream keeps working after GOAWAY.
	eventually(t, "goaway seen", func() bool {
		ok := false
		p.mu.Lock()
		defer p.mu.Unlock()
		for cc := range p.keyOf {
			cc.mu.Lock()
			ok = cc.goAwayRecv
			cc.mu.Unlock()
		}
		return ok
	})
	if _, err := c.Write([]byte("after goaway")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "after goaway" {
		t.Fatalf("echo after GOAWAY: %q %v", b, err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := p.Dial(context.Background(), testReq(addr)); err == nil {
		t.Fatal("dial after shutdown succeeded")
	}
}

func TestPoolCloseIdempotent(t *testing.T) { onLayers(t, testPoolCloseIdempotent) }

func testPoolCloseIdempotent(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, nil)
	c, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	p.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on closed pool's stream succeeded")
	}
	if _, err := p.Dial(context.Background(), testReq(addr)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("dial after Close: %v", err)
	}
}

// TestPoolSpreadsConcurrentStreams: concurrent streams to one destination spread over up
// to ConnsPerDest connections, then share the least loaded; a failed extra dial falls back
// to a working connection instead of failing the stream.
func TestPoolSpreadsConcurrentStreams(t *testing.T) { onLayers(t, testPoolSpreadsConcurrentStreams) }

func testPoolSpreadsConcurrentStreams(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	var failDials atomic.Bool
	p := newTestPool(t, func(c *ClientConfig) {
		c.ConnsPerDest = 3
		c.Dial = func(ctx context.Context, network, a string) (net.Conn, error) {
			if failDials.Load() {
				return nil, errors.New("dial refused by the test")
			}
			return (&net.Dialer{}).DialContext(ctx, network, a)
		}
	})
	open := func() *Conn {
		t.Helper()
		c, err := p.Dial(context.Background(), testReq(addr))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Sequential streams reuse one connection.
	for range 3 {
		c := open()
		c.Close()
		eventually(t, "stream gone", func() bool { return p.Stats().Streams == 0 })
	}
	if st := p.Stats(); st.Conns != 1 {
		t.Fatalf("after sequential streams: %+v, want 1 connection", st)
	}
	var held []*Conn
	for range 3 {
		held = append(held, open())
	}
	if st := p.Stats(); st.Conns != 3 || st.Streams != 3 {
		t.Fatalf("3 concurrent streams: %+v, want 3 connections", st)
	}
	held = append(held, open(), open(), open())
	if st := p.Stats(); st.Conns != 3 || st.Streams != 6 {
		t.Fatalf("6 concurrent streams: %+v, want them on 3 connections", st)
	}
	for _, c := range held {
		c.Close()
	}
	eventually(t, "streams gone", func() bool { return p.Stats().Streams == 0 })

	// A fresh destination whose extra dials fail: the streams share the one connection.
	_, addr2 := startServer(t, echoHandler, nil)
	c1, err := p.Dial(context.Background(), testReq(addr2))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	failDials.Store(true)
	c2, err := p.Dial(context.Background(), testReq(addr2))
	if err != nil {
		t.Fatalf("stream failed although a connection could carry it: %v", err)
	}
	defer c2.Close()
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c2, b); err != nil || b[0] != 'x' {
		t.Fatalf("echo over the shared connection: %q %v", b, err)
	}
}

// Streams of one connection that write at the same moment share a socket write: the
// first writer lets the others queue their frames before it writes the batch. One P
// makes "the same moment" exact: the writers are all runnable when the first runs.
// (A waypoint's requests from one client, a node pair's connections, share connections
// like this; the kernel's cost of a write is most of a small request's.)
func TestConcurrentWritesShareASocketWrite(t *testing.T) {
	onLayers(t, testConcurrentWritesShareASocketWrite)
}

func testConcurrentWritesShareASocketWrite(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	_, addr := startServer(t, echoHandler, nil)
	p, writes := writeCountingPool(t, func(c *ClientConfig) { c.ConnsPerDest = 1 })
	const n = 4
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := p.Dial(context.Background(), testReq(addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	msg := []byte("a small request")
	// A first round settles the connection: settings, acks and answers all written.
	for _, c := range conns {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
	}
	before := writes.Load()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			<-start
			if _, err := c.Write(msg); err != nil {
				t.Error(err)
			}
		})
	}
	runtime.Gosched() // all writers wait on start
	close(start)
	wg.Wait()
	if got := writes.Load() - before; got >= n {
		t.Errorf("%d streams writing at once took %d socket writes, want fewer than %d", n, got, n)
	}
	for _, c := range conns {
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo after the shared write: %q, %v", got, err)
		}
	}
}
