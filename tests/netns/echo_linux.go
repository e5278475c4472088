package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// EchoServer is a TCP echo server in a namespace that records the peers it saw.
type EchoServer struct {
	Addr netip.AddrPort

	l     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	peers []netip.AddrPort
	conns map[net.Conn]struct{}
	done  bool
}

// ServeEcho listens on addr (e.g. "198.18.1.10:7000" or ":0") in ns and echoes every
// connection until the client half-closes, then half-closes too. It stops in tb.Cleanup.
func (ns *NS) ServeEcho(tb testing.TB, addr string) *EchoServer {
	tb.Helper()
	e, err := ns.StartEcho(addr)
	if err != nil {
		tb.Fatalf("serve echo: %v", err)
	}
	tb.Cleanup(e.Close)
	return e
}

// StartEcho is ServeEcho without testing.TB; call Close when done.
func (ns *NS) StartEcho(addr string) (*EchoServer, error) {
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	e := &EchoServer{l: l, conns: map[net.Conn]struct{}{}}
	e.Addr = l.Addr().(*net.TCPAddr).AddrPort()
	e.Addr = netip.AddrPortFrom(e.Addr.Addr().Unmap(), e.Addr.Port())
	e.wg.Add(1)
	go e.accept()
	return e, nil
}

func (e *EchoServer) accept() {
	defer e.wg.Done()
	for {
		c, err := e.l.Accept()
		if err != nil {
			return
		}
		ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		e.mu.Lock()
		if e.done {
			e.mu.Unlock()
			c.Close()
			return
		}
		e.peers = append(e.peers, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		e.conns[c] = struct{}{}
		e.wg.Add(1)
		e.mu.Unlock()
		go e.serve(c)
	}
}

func (e *EchoServer) serve(c net.Conn) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		c.Close()
	}()
	_, err := io.Copy(c, c)
	if err == nil || errors.Is(err, io.EOF) {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
}

// Peers returns the remote addresses of all accepted connections, in accept order.
func (e *EchoServer) Peers() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]netip.AddrPort(nil), e.peers...)
}

// LastPeer returns the remote address of the last accepted connection; none fails tb.
func (e *EchoServer) LastPeer(tb testing.TB) netip.Addr {
	tb.Helper()
	peers := e.Peers()
	if len(peers) == 0 {
		tb.Fatalf("echo server %s saw no connection", e.Addr)
	}
	return peers[len(peers)-1].Addr()
}

// pingTimeout bounds a Ping only against hangs.
const pingTimeout = 10 * time.Second

// Ping writes msg on c, a connection to an echo server, and checks that msg comes back.
// It leaves c open for more.
func Ping(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(pingTimeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("ping %q: write: %w", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("ping %q: read back: %w", msg, err)
	}
	if string(buf) != msg {
		return fmt.Errorf("ping %q: read back %q", msg, buf)
	}
	return nil
}

// Pinger is a test's connection to an echo server.
type Pinger struct {
	net.Conn
	tb testing.TB
}

// DialPinger connects from ns to the echo server at addr for tb, failing it when that
// fails; the connection is closed at tb's cleanup.
func (ns *NS) DialPinger(tb testing.TB, addr netip.AddrPort) *Pinger {
	tb.Helper()
	c, err := ns.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &Pinger{Conn: c, tb: tb}
}

// Ping is the package's Ping on the connection; a failure fails the test.
func (p *Pinger) Ping(msg string) {
	p.tb.Helper()
	if err := Ping(p.Conn, msg); err != nil {
		p.tb.Fatal(err)
	}
}

// Close stops accepting, closes open connections and waits for the goroutines.
func (e *EchoServer) Close() {
	e.mu.Lock()
	e.done = true
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.l.Close()
	e.wg.Wait()
}
