//go:build !linux

package redirect

import (
	"context"
	"net"
	"net/netip"
)

// Capture is unavailable on this platform.
type Capture struct{}

// New returns ErrUnsupported.
func New(Config) (*Capture, error) { return nil, ErrUnsupported }

// EnrollPod returns ErrUnsupported.
func (*Capture) EnrollPod(netip.Addr, int) error { return ErrUnsupported }

// UnenrollPod returns ErrUnsupported.
func (*Capture) UnenrollPod(netip.Addr) error { return ErrUnsupported }

// SetPlainPods returns ErrUnsupported.
func (*Capture) SetPlainPods([]int) error { return ErrUnsupported }

// Pods returns nil.
func (*Capture) Pods() map[netip.Addr]int { return nil }

// Attached returns false.
func (*Capture) Attached() bool { return false }

// Mode returns AttachAuto.
func (*Capture) Mode() AttachMode { return AttachAuto }

// Close does nothing.
func (*Capture) Close() error { return nil }

// Teardown returns ErrUnsupported.
func Teardown(Config) error { return ErrUnsupported }

// HostInterface returns ErrUnsupported.
func HostInterface(netip.Addr) (int, error) { return 0, ErrUnsupported }

// ListenTransparent returns ErrUnsupported.
func ListenTransparent(context.Context, string) (net.Listener, error) { return nil, ErrUnsupported }

// DialTransparent returns ErrUnsupported.
func DialTransparent(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) {
	return nil, ErrUnsupported
}
