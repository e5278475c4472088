package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

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

func setTransparent(reuseAddr bool) func(network, address string, rc syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// Without IP_TRANSPARENT a socket cannot own (accept for, or send from) a
			// non-local address.
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr != nil {
				serr = fmt.Errorf("set IP_TRANSPARENT: %w", serr)
				return
			}
			if reuseAddr {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
					serr = fmt.Errorf("set SO_REUSEADDR: %w", serr)
					return
				}
				// Accepted sockets inherit the listener's keepalive settings, so Go
				// need not set them on each (four syscalls per connection).
				for _, o := range []struct {
					level, opt, val int
					name            string
				}{
					{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
					{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle, "TCP_KEEPIDLE"},
					{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveInterval, "TCP_KEEPINTVL"},
					{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount, "TCP_KEEPCNT"},
				} {
					if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.val); serr != nil {
						serr = fmt.Errorf("set %s: %w", o.name, serr)
						return
					}
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// ListenTransparent listens on the IPv4 TCP address addr (e.g. "127.0.0.1:15001") with
// IP_TRANSPARENT and SO_REUSEADDR, so it can accept connections assigned by the capture
// programs whatever their destination. The accepted connection's LocalAddr is the
// original destination.
func ListenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	// KeepAlive -1: keepalive is on, set once on the listener (see setTransparent).
	lc := net.ListenConfig{Control: setTransparent(true), KeepAlive: -1}
	l, err := lc.Listen(ctx, "tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("listen transparent %s: %w", addr, err)
	}
	return l, nil
}

// DialTransparent connects to dst from the (usually non-local) source address src with an
// ephemeral port, using IP_TRANSPARENT; the capture routes the replies back to it. The
// connect is bounded by ctx.
func DialTransparent(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	src, dstAddr := src.Unmap(), dst.Addr().Unmap()
	if !src.Is4() || !dstAddr.Is4() {
		return nil, fmt.Errorf("dial transparent %s -> %s: only IPv4 is supported", src, dst)
	}
	d := net.Dialer{Control: setTransparent(false)}
	// DialTCP with addresses, not DialContext with a string: no resolver and no
	// parallel-dial machinery on a path taken once per inbound connection.
	target := netip.AddrPortFrom(dstAddr, dst.Port())
	c, err := d.DialTCP(ctx, "tcp4", netip.AddrPortFrom(src, 0), target)
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
