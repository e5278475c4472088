package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Keepalive of proxied connections (Go's defaults): a pod that vanished without a FIN
// or RST is noticed after about two and a half minutes of silence.
const (
	keepAliveIdle     = 15 // seconds
	keepAliveInterval = 15 // seconds
	keepAliveCount    = 9
)

var (
	keepAliveOpts = []sockOpt{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle, "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveInterval, "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount, "TCP_KEEPCNT"},
	}
	// Options of the transparent listener (ListenTransparent), on either stack. Accepted
	// sockets inherit the keepalive settings, so they need not be set on each (four
	// system calls per connection).
	listenOpts = append([]sockOpt{
		{unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"},
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"},
	}, keepAliveOpts...)
	// Options of a transparent dial, set before bind, on either stack.
	// IP_BIND_ADDRESS_NO_PORT leaves the port to connect, which picks one unused for the
	// whole four-tuple: a bind to port 0 wants one no socket on that source address
	// holds, TIME_WAIT included, and scans the range for it, longer the more connections
	// one client made lately (most of a CPU at 2,000 connections per second from one
	// client, then none left).
	dialOpts = append([]sockOpt{
		{unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"},
		{unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1, "IP_BIND_ADDRESS_NO_PORT"},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY"},
	}, keepAliveOpts...)
)

// ListenTransparent listens with the raw stack (SocketsRaw.ListenTransparent).
func ListenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	return SocketsRaw.ListenTransparent(ctx, addr)
}

// DialTransparent dials with the raw stack (SocketsRaw.DialTransparent).
func DialTransparent(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return SocketsRaw.DialTransparent(ctx, src, dst)
}

// ListenTransparent listens on the IPv4 TCP address addr (e.g. "127.0.0.1:15001") with
// IP_TRANSPARENT and SO_REUSEADDR, so it can accept connections assigned by the capture
// programs whatever their destination. An accepted connection (a *Socket, or with
// SocketsStd a *net.TCPConn) has the original destination as its LocalAddr. ctx bounds
// the set-up only.
func (s SocketStack) ListenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("listen transparent %s: want an IPv4 address and port", addr)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	var l net.Listener
	switch s {
	case SocketsRaw:
		l, err = listenSocket(ap, listenOpts)
	case SocketsStd:
		l, err = listenStd(ctx, ap)
	default:
		err = fmt.Errorf("unknown %v", s)
	}
	if err != nil {
		return nil, fmt.Errorf("listen transparent %s: %w", addr, err)
	}
	return l, nil
}

// DialTransparent connects to dst from the (usually non-local) source address src with an
// ephemeral port, using IP_TRANSPARENT; the capture routes the replies back to it. The
// connection (a *Socket, or with SocketsStd a *net.TCPConn) has TCP_NODELAY and the
// keepalive settings of an accepted one. The connect is bounded by ctx.
func (s SocketStack) DialTransparent(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	src, dstAddr := src.Unmap(), dst.Addr().Unmap()
	if !src.Is4() || !dstAddr.Is4() {
		return nil, fmt.Errorf("dial transparent %s -> %s: only IPv4 is supported", src, dst)
	}
	target := netip.AddrPortFrom(dstAddr, dst.Port())
	var (
		c   net.Conn
		err error
	)
	switch s {
	case SocketsRaw:
		c, err = dialSocket(ctx, src, target)
	case SocketsStd:
		c, err = dialStd(ctx, src, target)
	default:
		err = fmt.Errorf("unknown %v", s)
	}
	if err != nil {
		return nil, fmt.Errorf("dial transparent %s -> %s: %w", src, target, err)
	}
	return c, nil
}

// HostInterface returns the ifindex of the interface the current network namespace routes
// podIP through: the pod's host-side veth with routed pod networking.
func HostInterface(podIP netip.Addr) (int, error) {
	ip := podIP.Unmap()
	if !ip.IsValid() {
		return 0, errors.New("host interface: invalid pod IP")
	}
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil {
		return 0, fmt.Errorf("host interface of %s: route lookup: %w", ip, err)
	}
	if len(routes) == 0 {
		return 0, fmt.Errorf("host interface of %s: no route", ip)
	}
	r := routes[0]
	if r.Type == unix.RTN_LOCAL || r.LinkIndex <= 0 {
		return 0, fmt.Errorf("host interface of %s: address is local to the node: %w", ip, ErrNotDirect)
	}
	if r.Gw != nil {
		return 0, fmt.Errorf("host interface of %s: routed via gateway %s: %w", ip, r.Gw, ErrNotDirect)
	}
	return r.LinkIndex, nil
}
