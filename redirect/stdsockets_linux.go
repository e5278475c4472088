package redirect

import (
	"context"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The standard library's stack (SocketsStd): the net package makes the sockets and
// hands out *net.TCPConn, and Control hooks set the options the raw stack sets, from
// the same tables, before bind. The net package's own keepalive setup is off
// (KeepAlive < 0): the options already hold Go's default timing, and accepted sockets
// inherit the listener's.

func listenStd(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{Control: setOpts(listenOpts), KeepAlive: -1}
	return lc.Listen(ctx, "tcp4", addr.String())
}

func dialStd(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Control: setOpts(dialOpts), KeepAlive: -1}
	c, err := d.DialTCP(ctx, "tcp4", netip.AddrPortFrom(src, 0), dst)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// setOpts returns a Control hook that sets opts on the new socket.
func setOpts(opts []sockOpt) func(network, address string, rc syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			for _, o := range opts {
				if e := unix.SetsockoptInt(int(fd), o.level, o.opt, o.val); e != nil {
					serr = os.NewSyscallError("setsockopt "+o.name, e)
					return
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}
