//go:build !linux

package redirect

import (
	"context"
	"net"
	"net/netip"
)

// ListenTransparent returns ErrUnsupported.
func (SocketStack) ListenTransparent(context.Context, string) (net.Listener, error) {
	return nil, ErrUnsupported
}

// DialTransparent returns ErrUnsupported.
func (SocketStack) DialTransparent(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) {
	return nil, ErrUnsupported
}
