package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const testAuthority = "198.18.0.9:8080"

// startServer runs a Server on testAddr with handler h, on tb's record layer.
func startServer(tb testing.TB, h Handler, mod func(*ServerConfig)) (*Server, string) {
	tb.Helper()
	l, err := net.Listen("tcp", testAddr+":0")
	if err != nil {
		tb.Fatal(err)
	}
	cfg := ServerConfig{TLSConfig: theCA(tb).serverTLS(tb, idServer), Handler: h, Records: layerOf(tb)}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	tb.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			tb.Errorf("Serve returned %v, want net.ErrClosed", err)
		}
	})
	return srv, l.Addr().String()
}

// newTestPool returns a Pool on tb's record layer.
func newTestPool(tb testing.TB, mod func(*ClientConfig)) *Pool {
	tb.Helper()
	cfg := ClientConfig{TLSConfig: testClientTLS(tb), Records: layerOf(tb)}
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewPool(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// writeCounter counts writes to the TCP socket under the TLS connection.
type writeCounter struct {
	net.Conn
	n *atomic.Int32
}

func (w writeCounter) Write(p []byte) (int, error) {
	w.n.Add(1)
	return w.Conn.Write(p)
}

// writeCountingPool is a test pool whose connections count their socket writes. The
// wrapper is no syscall.Conn, so the record layer writes through it.
func writeCountingPool(tb testing.TB, mod func(*ClientConfig)) (*Pool, *atomic.Int32) {
	writes := new(atomic.Int32)
	p := newTestPool(tb, func(cfg *ClientConfig) {
		if mod != nil {
			mod(cfg)
		}
		cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return writeCounter{nc, writes}, nil
		}
	})
	return p, writes
}

func testReq(addr string) Request {
	return Request{Addr: addr, Authority: testAuthority, Src: idClient, Dst: idServer}
}

// echoHandler accepts and echoes until EOF, then half-closes.
var echoHandler = HandlerFunc(func(s *Stream) {
	if err := s.Accept(); err != nil {
		return
	}
	io.Copy(s, s)
	s.CloseWrite()
})

// eventually polls cond until it holds (no timing assertion: the bound only
// keeps a broken build from hanging).
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("condition never held: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testClientTLS(tb testing.TB) func(src, dst spiffeid.ID) (*tls.Config, error) {
	ca := theCA(tb)
	return func(src, dst spiffeid.ID) (*tls.Config, error) { return ca.clientTLS(tb, src, dst), nil }
}
