package redirect_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/redirect"
	"github.com/ambitmesh/ambit/tests/netns"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// stacks are the socket stacks every socket test runs on.
var stacks = []redirect.SocketStack{redirect.SocketsRaw, redirect.SocketsStd}

// eachStack runs f as a subtest for each socket stack.
func eachStack(t *testing.T, f func(t *testing.T, s redirect.SocketStack)) {
	for _, s := range stacks {
		t.Run(s.String(), func(t *testing.T) { f(t, s) })
	}
}

// listen starts a transparent listener of stack s on loopback (the test's private
// namespace).
func listen(tb testing.TB, s redirect.SocketStack) net.Listener {
	tb.Helper()
	netns.RequireRoot(tb)
	l, err := s.ListenTransparent(context.Background(), "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// wantConn checks that c is the connection type stack s hands out.
func wantConn(tb testing.TB, s redirect.SocketStack, c net.Conn) {
	tb.Helper()
	var ok bool
	switch s {
	case redirect.SocketsRaw:
		_, ok = c.(*redirect.Socket)
	case redirect.SocketsStd:
		_, ok = c.(*net.TCPConn)
	}
	if !ok {
		tb.Fatalf("%v stack handed out a %T", s, c)
	}
}

// socketPair is a connection made by stack s at both ends: one accepted by the
// transparent listener l, one from DialTransparent.
func socketPair(tb testing.TB, s redirect.SocketStack, l net.Listener) (dialed, accepted net.Conn) {
	tb.Helper()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			tb.Error(err)
		}
		acc <- c
	}()
	d, err := s.DialTransparent(context.Background(), loopback, netip.MustParseAddrPort(l.Addr().String()))
	if err != nil {
		tb.Fatal(err)
	}
	a := <-acc
	if a == nil {
		d.Close()
		tb.FailNow()
	}
	for _, c := range []net.Conn{d, a} {
		wantConn(tb, s, c)
	}
	return d, a
}

// checkProxiedSockopts checks the options every proxied socket carries: TCP_NODELAY and
// keepalive with Go's default timing.
func checkProxiedSockopts(tb testing.TB, what string, c net.Conn) {
	tb.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
	} {
		var got int
		var gerr error
		if err := raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), o.level, o.opt) }); err != nil {
			tb.Fatal(err)
		}
		if gerr != nil || got != o.want {
			tb.Errorf("%s socket %s = %d (%v), want %d", what, o.name, got, gerr, o.want)
		}
	}
}

func TestSocketConn(t *testing.T) {
	eachStack(t, func(t *testing.T, s redirect.SocketStack) {
		l := listen(t, s)
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			d, a := socketPair(t, s, l)
			return d, a, func() { d.Close(); a.Close() }, nil
		})
	})
}

// Both ends' addresses, the options a proxied socket needs, and half-close.
func TestSocketSetup(t *testing.T) { eachStack(t, testSocketSetup) }

func testSocketSetup(t *testing.T, s redirect.SocketStack) {
	l := listen(t, s)
	d, a := socketPair(t, s, l)
	defer d.Close()
	defer a.Close()
	if d.RemoteAddr().String() != l.Addr().String() || a.LocalAddr().String() != l.Addr().String() {
		t.Errorf("dialed remote %s, accepted local %s, want both %s", d.RemoteAddr(), a.LocalAddr(), l.Addr())
	}
	if d.LocalAddr().String() != a.RemoteAddr().String() {
		t.Errorf("dialed local %s, accepted remote %s: want the same", d.LocalAddr(), a.RemoteAddr())
	}
	for _, ad := range []net.Addr{d.LocalAddr(), d.RemoteAddr(), a.LocalAddr(), a.RemoteAddr()} {
		if ap := ad.(*net.TCPAddr).AddrPort(); !ap.Addr().Is4() {
			t.Errorf("address %s is not plain IPv4", ap)
		}
	}
	checkProxiedSockopts(t, "dialed", d)
	checkProxiedSockopts(t, "accepted", a)
	// Half-close: the peer reads EOF and can still answer.
	if _, err := d.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := d.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(a)
	if err != nil || string(got) != "ping" {
		t.Fatalf("accepted read %q, %v; want ping then EOF", got, err)
	}
	if _, err := a.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	got, err = io.ReadAll(d)
	if err != nil || string(got) != "pong" {
		t.Fatalf("dialed read %q, %v; want pong then EOF", got, err)
	}
	if err := d.(interface{ CloseWrite() error }).CloseWrite(); err != nil && !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("second CloseWrite: %v", err)
	}
	d.Close()
	if _, err := d.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	raw, _ := d.(syscall.Conn).SyscallConn()
	if err := raw.Control(func(uintptr) {}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("RawConn.Control after Close: %v, want net.ErrClosed", err)
	}
}

// SetLinger(0) makes Close reset the connection, as a crashing proxy's would.
func TestSocketLingerReset(t *testing.T) {
	eachStack(t, func(t *testing.T, s redirect.SocketStack) {
		l := listen(t, s)
		d, a := socketPair(t, s, l)
		defer d.Close()
		if err := a.(interface{ SetLinger(int) error }).SetLinger(0); err != nil {
			t.Fatal(err)
		}
		a.Close()
		if _, err := io.ReadAll(d); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after the peer's abortive close: %v, want ECONNRESET", err)
		}
	})
}

func TestDialTransparentErrors(t *testing.T) { eachStack(t, testDialTransparentErrors) }

func testDialTransparentErrors(t *testing.T, s redirect.SocketStack) {
	l := listen(t, s)
	closedPort := func() netip.AddrPort {
		l2 := listen(t, s)
		ap := netip.MustParseAddrPort(l2.Addr().String())
		l2.Close()
		return ap
	}()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	canceled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	tests := []struct {
		name string
		ctx  context.Context
		src  netip.Addr
		dst  netip.AddrPort
		want error
	}{
		{"refused", context.Background(), loopback, closedPort, syscall.ECONNREFUSED},
		{"deadline passed", expired, loopback, netip.MustParseAddrPort(l.Addr().String()), context.DeadlineExceeded},
		{"canceled", canceled, loopback, netip.MustParseAddrPort(l.Addr().String()), context.Canceled},
		{"source not IPv4", context.Background(), netip.MustParseAddr("::1"), closedPort, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := s.DialTransparent(tt.ctx, tt.src, tt.dst)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("dial: %v, want %v", err, tt.want)
			}
			if !bytes.Contains([]byte(err.Error()), []byte(tt.dst.String())) {
				t.Errorf("error %q does not name the destination %s", err, tt.dst)
			}
		})
	}
}

func TestListenerClose(t *testing.T) { eachStack(t, testListenerClose) }

func testListenerClose(t *testing.T, s redirect.SocketStack) {
	l := listen(t, s)
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let Accept wait; it must return either way
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
	if _, err := s.ListenTransparent(context.Background(), "[::1]:0"); err == nil {
		t.Fatal("listen on IPv6 succeeded")
	}
}

// A Socket turned into a *net.TCPConn (for splice) carries the same connection on, and
// a bulk copy between two of them arrives intact. (The standard stack's connections are *net.TCPConn already.)
func TestSocketTCPConn(t *testing.T) {
	s := redirect.SocketsRaw
	l := listen(t, s)
	d, a := socketPair(t, s, l)
	td, err := d.(*redirect.Socket).TCPConn()
	if err != nil {
		t.Fatal(err)
	}
	defer td.Close()
	ta, err := a.(*redirect.Socket).TCPConn()
	if err != nil {
		t.Fatal(err)
	}
	defer ta.Close()
	if _, err := d.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write to the converted Socket: %v, want net.ErrClosed", err)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() {
		td.Write(msg)
		td.CloseWrite()
	}()
	h := sha256.New()
	if _, err := io.Copy(h, ta); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(msg); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("data changed on the way")
	}
}

// A transparent dial takes its port when it connects, for its whole four-tuple, as the
// client's own connect does, not at bind: a source whose connections to one destination
// left every port of the range in TIME_WAIT can still reach another destination, and the
// same one once tcp_tw_reuse allows. A bind to port 0 wants a port no socket on the
// address holds and scanned the range past every TIME_WAIT socket, in a raw system call:
// at 2,000 connections per second from one client that took the server side's ztunnel
// most of a CPU, then failed (docs/performance.md, "Design decisions of the fast paths").
func TestDialTransparentPortAtConnect(t *testing.T) { eachStack(t, testDialTransparentPortAtConnect) }

func testDialTransparentPortAtConnect(t *testing.T, s redirect.SocketStack) {
	topo := netns.New(t, netns.Options{Nodes: 1, PodsPerNode: 1})
	pod := topo.Nodes[0].Pods[0]
	const lo, hi = 40000, 40007 // eight ephemeral ports
	if err := pod.Sysctl("net.ipv4.ip_local_port_range", fmt.Sprintf("%d %d", lo, hi)); err != nil {
		t.Fatal(err)
	}
	if err := pod.Sysctl("net.ipv4.tcp_tw_reuse", "1"); err != nil {
		t.Fatal(err)
	}
	// Two destinations in the pod, each reading to EOF and closing after the dialer, so
	// the dialer's sockets go to TIME_WAIT.
	dsts := make([]netip.AddrPort, 2)
	for i := range dsts {
		l, err := pod.Listen("tcp", netip.AddrPortFrom(pod.IP, uint16(9000+i)).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		dsts[i] = netip.MustParseAddrPort(l.Addr().String())
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					io.Copy(io.Discard, c)
				}()
			}
		}()
	}
	dial := func(dst netip.AddrPort) (netip.AddrPort, error) {
		var local netip.AddrPort
		err := pod.Do(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := s.DialTransparent(ctx, pod.IP, dst)
			if err != nil {
				return err
			}
			local = c.LocalAddr().(*net.TCPAddr).AddrPort()
			return c.Close()
		})
		return local, err
	}
	for i := range hi - lo + 1 {
		local, err := dial(dsts[0])
		if err != nil {
			t.Fatalf("connection %d to %s: %v", i+1, dsts[0], err)
		}
		if local.Port() < lo || local.Port() > hi {
			t.Fatalf("connection %d from port %d, outside the range %d-%d set for the test", i+1, local.Port(), lo, hi)
		}
		if !waitTimeWait(t, pod.NS, local, dsts[0]) {
			t.Fatalf("connection %d: no TIME_WAIT socket %s -> %s: the test would not test anything", i+1, local, dsts[0])
		}
	}
	if _, err := dial(dsts[1]); err != nil {
		t.Fatalf("dial %s with every port in TIME_WAIT towards %s: %v", dsts[1], dsts[0], err)
	}
	// Towards the same destination, a port in TIME_WAIT is taken over as the client's
	// own connect would take it with tcp_tw_reuse (after its delay, a second by default);
	// a bind to port 0 never does.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := dial(dsts[0])
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRNOTAVAIL) || time.Now().After(deadline) {
			t.Fatalf("dial %s again with tcp_tw_reuse: %v", dsts[0], err)
		}
	}
}

// Close waits for an operation in progress on the descriptor: its number stays the
// socket's until the operation is done, so it cannot meet a reused descriptor.
func TestSocketCloseWaitsForOperation(t *testing.T) {
	eachStack(t, testSocketCloseWaitsForOperation)
}

func testSocketCloseWaitsForOperation(t *testing.T, s redirect.SocketStack) {
	l := listen(t, s)
	d, a := socketPair(t, s, l)
	defer a.Close()
	raw, err := d.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	inside, release := make(chan struct{}), make(chan struct{})
	var stillOpen error
	ctlDone := make(chan error, 1)
	go func() {
		ctlDone <- raw.Control(func(fd uintptr) {
			inside <- struct{}{}
			<-release
			// Close was called meanwhile: the descriptor is still this socket.
			_, stillOpen = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		})
	}()
	<-inside
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while an operation held the descriptor", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-ctlDone; err != nil {
		t.Fatalf("Control: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if stillOpen != nil {
		t.Fatalf("descriptor inside Control after Close began: %v", stillOpen)
	}
	// The peer sees the connection end.
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(a); err != nil {
		t.Fatalf("peer read after Close: %v", err)
	}
}

// A Socket dropped without Close is closed when the collector finds it, as an os.File
// would be: the peer reads EOF.
func TestSocketClosedWhenCollected(t *testing.T) { eachStack(t, testSocketClosedWhenCollected) }

func testSocketClosedWhenCollected(t *testing.T, s redirect.SocketStack) {
	l := listen(t, s)
	_, a := socketPair(t, s, l)
	defer a.Close()
	got := make(chan error, 1)
	go func() {
		a.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(a)
		got <- err
	}()
	for {
		runtime.GC()
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("peer of a dropped socket: %v, want EOF", err)
			}
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestSocketStackNames(t *testing.T) {
	tests := []struct {
		in      string
		want    redirect.SocketStack
		wantErr bool
	}{
		{"", redirect.SocketsRaw, false},
		{"raw", redirect.SocketsRaw, false},
		{"RAW", redirect.SocketsRaw, false},
		{"std", redirect.SocketsStd, false},
		{"net", 0, true},
		{"raw ", 0, true},
	}
	for _, tt := range tests {
		got, err := redirect.ParseSocketStack(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSocketStack(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil && tt.in != "" && !strings.EqualFold(got.String(), tt.in) {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tt.in)
		}
	}
	// A stack that does not exist is an error, not a panic or a default.
	bad := redirect.SocketStack(9)
	if l, err := bad.ListenTransparent(context.Background(), "127.0.0.1:0"); err == nil {
		l.Close()
		t.Error("ListenTransparent on an unknown stack succeeded")
	}
	if c, err := bad.DialTransparent(context.Background(), loopback, netip.MustParseAddrPort("127.0.0.1:1")); err == nil {
		c.Close()
		t.Error("DialTransparent on an unknown stack succeeded")
	}
}
