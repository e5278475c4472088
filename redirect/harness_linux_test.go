package redirect_test

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/redirect"
	"github.com/ambitmesh/ambit/tests/netns"
	"golang.org/x/sys/unix"
)

// The capture tests' mini ztunnel makes its sockets with this stack (go test ./redirect
// -args -sockets=std); the socket tests run on every stack anyway.
var harnessSockets = flag.String("sockets", "raw", "socket stack of the mini ztunnel in the capture tests: raw or std")

const (
	ioTimeout   = 20 * time.Second
	failTimeout = 1500 * time.Millisecond // how long a dial that must fail gets
)

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// captureConfig returns a Config for node with its own bpffs under a temp dir; the cleanup
// tears everything down (and unmounts the bpffs even if Teardown failed).
func captureConfig(tb testing.TB, node *netns.Node, mode redirect.AttachMode) redirect.Config {
	tb.Helper()
	cfg := redirect.Config{
		PinPath: filepath.Join(tb.TempDir(), "bpf"),
		Uplinks: []string{node.Uplink},
		Attach:  mode,
		Logger:  testLogger(),
	}
	tb.Cleanup(func() {
		if err := node.Do(func() error { return redirect.Teardown(cfg) }); err != nil {
			tb.Errorf("teardown: %v", err)
		}
		_ = unix.Unmount(cfg.PinPath, unix.MNT_DETACH)
	})
	return cfg
}

// newCapture runs redirect.New in node's namespace and closes the Capture in cleanup.
func newCapture(tb testing.TB, node *netns.Node, cfg redirect.Config) *redirect.Capture {
	tb.Helper()
	var c *redirect.Capture
	if err := node.Do(func() (err error) { c, err = redirect.New(cfg); return err }); err != nil {
		tb.Fatalf("new capture on %s: %v", node.Name, err)
	}
	tb.Cleanup(func() { c.Close() })
	if !c.Attached() {
		tb.Fatal("capture not attached after New")
	}
	return c
}

func enroll(tb testing.TB, c *redirect.Capture, pods ...*netns.Pod) {
	tb.Helper()
	for _, p := range pods {
		if err := c.EnrollPod(p.IP, p.HostIfindex); err != nil {
			tb.Fatalf("enroll %s: %v", p.Name, err)
		}
	}
}

// accepted is one connection the mini ztunnel accepted.
type accepted struct {
	Port          uint16 // listener port
	Local, Remote netip.AddrPort
}

// miniZtunnel is a tiny ztunnel: transparent listeners on 127.0.0.1 in the node namespace;
// each accepted connection is spliced to its original destination (LocalAddr), dialed
// transparently from the client's IP. With closeFirst it instead writes "hi\n" and closes
// (the node side then holds the TIME_WAIT).
type miniZtunnel struct {
	node       *netns.Node
	closeFirst bool
	sockets    redirect.SocketStack

	mu       sync.Mutex
	ls       []net.Listener
	accepted []accepted
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
	closed   bool
}

var proxyPorts = []uint16{redirect.DefaultOutboundPort, redirect.DefaultInboundPort, redirect.DefaultHBONEPort}

func startZtunnel(tb testing.TB, node *netns.Node, closeFirst bool) *miniZtunnel {
	tb.Helper()
	sockets, err := redirect.ParseSocketStack(*harnessSockets)
	if err != nil {
		tb.Fatal(err)
	}
	z := &miniZtunnel{node: node, closeFirst: closeFirst, sockets: sockets, conns: map[net.Conn]struct{}{}}
	for _, port := range proxyPorts {
		var l net.Listener
		err := node.Do(func() (err error) {
			l, err = sockets.ListenTransparent(context.Background(), fmt.Sprintf("127.0.0.1:%d", port))
			return err
		})
		if err != nil {
			z.Close(false)
			tb.Fatalf("listen: %v", err)
		}
		z.ls = append(z.ls, l)
		z.wg.Add(1)
		go z.serve(l, port)
	}
	tb.Cleanup(func() { z.Close(false) })
	return z
}

func (z *miniZtunnel) track(c net.Conn) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.closed {
		return false
	}
	z.conns[c] = struct{}{}
	return true
}

func (z *miniZtunnel) untrack(c net.Conn) {
	z.mu.Lock()
	delete(z.conns, c)
	z.mu.Unlock()
	c.Close()
}

func (z *miniZtunnel) serve(l net.Listener, port uint16) {
	defer z.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		a := accepted{Port: port, Local: c.LocalAddr().(*net.TCPAddr).AddrPort(), Remote: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
		z.mu.Lock()
		z.accepted = append(z.accepted, a)
		z.mu.Unlock()
		if !z.track(c) {
			c.Close()
			return
		}
		z.wg.Add(1)
		go z.handle(c, a)
	}
}

func (z *miniZtunnel) handle(c net.Conn, a accepted) {
	defer z.wg.Done()
	defer z.untrack(c)
	if z.closeFirst {
		_, _ = c.Write([]byte("hi\n"))
		return
	}
	var up net.Conn
	err := z.node.Do(func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		up, err = z.sockets.DialTransparent(ctx, a.Remote.Addr(), a.Local)
		return err
	})
	if err != nil {
		return
	}
	if !z.track(up) {
		up.Close()
		return
	}
	defer z.untrack(up)
	var wg sync.WaitGroup
	wg.Go(func() { pipe(up, c) })
	pipe(c, up)
	wg.Wait()
}

// pipe copies src to dst, then half-closes dst.
func pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	if tc, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

// Accepted returns the connections accepted so far.
func (z *miniZtunnel) Accepted() []accepted {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]accepted(nil), z.accepted...)
}

// Close stops the listeners and closes every connection; with reset, abortively (RST), as
// a crashing ztunnel would.
func (z *miniZtunnel) Close(reset bool) {
	z.mu.Lock()
	if z.closed {
		z.mu.Unlock()
		return
	}
	z.closed = true
	for _, l := range z.ls {
		l.Close()
	}
	for c := range z.conns {
		if tc, ok := c.(interface{ SetLinger(int) error }); ok && reset {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
	z.mu.Unlock()
	z.wg.Wait()
}

// roundTrip dials to from ns (optionally from a fixed local address), sends msg, half-closes
// and returns the echo and the local address used.
func roundTrip(ns *netns.NS, local netip.AddrPort, to netip.AddrPort, msg string, timeout time.Duration) (string, netip.AddrPort, error) {
	c, err := dialFrom(ns, local, to, timeout)
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer c.Close()
	la := c.LocalAddr().(*net.TCPAddr).AddrPort()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", la, fmt.Errorf("write: %w", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", la, fmt.Errorf("close write: %w", err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), la, fmt.Errorf("read: %w", err)
	}
	return string(b), la, nil
}

func dialFrom(ns *netns.NS, local, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if local.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(local)
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				})
				return errors.Join(err, serr)
			}
		}
		c, err = d.Dial("tcp4", to.String())
		return err
	})
	return c, err
}

func mustRoundTrip(tb testing.TB, ns *netns.NS, to netip.AddrPort, msg string) netip.AddrPort {
	tb.Helper()
	got, la, err := roundTrip(ns, netip.AddrPort{}, to, msg, ioTimeout)
	if err != nil {
		tb.Fatalf("round trip %s -> %s: %v", ns.Name, to, err)
	}
	if got != msg {
		tb.Fatalf("round trip %s -> %s: got %q, want %q", ns.Name, to, got, msg)
	}
	return la
}

// sniffer sees every TCP segment delivered locally in a namespace (raw IPPROTO_TCP socket).
type sniffer struct {
	pc   net.PacketConn
	mu   sync.Mutex
	segs []segment
	cond *sync.Cond
	done chan struct{}
}

type segment struct {
	Src          netip.Addr
	Sport, Dport uint16
	Payload      string
}

func startSniffer(tb testing.TB, ns *netns.NS) *sniffer {
	tb.Helper()
	var pc net.PacketConn
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), "raw-tcp")
		defer f.Close()
		pc, err = net.FilePacketConn(f)
		return err
	})
	if err != nil {
		tb.Fatalf("raw socket in %s: %v", ns.Name, err)
	}
	s := &sniffer{pc: pc, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	go s.run()
	tb.Cleanup(func() {
		pc.Close()
		<-s.done
	})
	return s
}

func (s *sniffer) run() {
	defer close(s.done)
	buf := make([]byte, 65536)
	for {
		n, addr, err := s.pc.ReadFrom(buf)
		if err != nil {
			s.mu.Lock()
			s.cond.Broadcast()
			s.mu.Unlock()
			return
		}
		b := buf[:n]
		if len(b) < 20 {
			continue
		}
		off := int(b[12]>>4) * 4
		if off < 20 || off > len(b) {
			continue
		}
		src, _ := netip.AddrFromSlice(addr.(*net.IPAddr).IP.To4())
		seg := segment{Src: src, Sport: binary.BigEndian.Uint16(b[0:2]), Dport: binary.BigEndian.Uint16(b[2:4]), Payload: string(b[off:])}
		s.mu.Lock()
		s.segs = append(s.segs, seg)
		s.cond.Broadcast()
		s.mu.Unlock()
	}
}

// waitFor waits until a segment matching f was seen; false after timeout.
func (s *sniffer) waitFor(f func(segment) bool, timeout time.Duration) bool {
	timer := time.AfterFunc(timeout, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		for _, seg := range s.segs {
			if f(seg) {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-s.done:
			return false
		default:
		}
		s.cond.Wait()
	}
}

// mark returns a position for seenSince.
func (s *sniffer) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.segs)
}

// seenSince reports whether a segment matching f arrived after mark.
func (s *sniffer) seenSince(mark int, f func(segment) bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seg := range s.segs[mark:] {
		if f(seg) {
			return true
		}
	}
	return false
}

// inject sends one hand-made TCP segment (ACK|PSH with payload) from ns: a packet of a
// connection that no socket owns, as a pod would keep sending after ztunnel died.
func inject(tb testing.TB, ns *netns.NS, src, dst netip.AddrPort, payload string) {
	tb.Helper()
	pkt := make([]byte, 40+len(payload))
	ip, tcp := pkt[:20], pkt[20:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, unix.IPPROTO_TCP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], 0x01020304)
	binary.BigEndian.PutUint32(tcp[8:], 0x05060708)
	tcp[12], tcp[13] = 5<<4, 0x18 // ACK|PSH
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], payload)
	var pseudo uint32
	for _, w := range [][]byte{s4[:2], s4[2:], d4[:2], d4[2:]} {
		pseudo += uint32(binary.BigEndian.Uint16(w))
	}
	pseudo += unix.IPPROTO_TCP + uint32(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:], checksum(tcp, pseudo))
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: d4})
	})
	if err != nil {
		tb.Fatalf("inject from %s: %v", ns.Name, err)
	}
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
