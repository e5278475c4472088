package ztunnel

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"github.com/ambitmesh/ambit/internal/sockio"
	"github.com/ambitmesh/ambit/redirect"
)

// platformDefaults wires the Linux capture and socket implementations.
func (z *Ztunnel) platformDefaults() error {
	if z.newCapture == nil {
		z.newCapture = func(cfg Config, log *slog.Logger) (Capture, error) {
			c, err := redirect.New(redirect.Config{
				PinPath:      cfg.BPFPinPath,
				Mark:         cfg.Mark,
				MarkMask:     cfg.MarkMask,
				RouteTable:   cfg.RouteTable,
				OutboundPort: cfg.OutboundAddr.Port(),
				InboundPort:  cfg.InboundAddr.Port(),
				HBONEPort:    cfg.HBONEAddr.Port(),
				Uplinks:      cfg.Uplinks,
				Logger:       log,
			})
			if err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	if z.hostInterface == nil {
		z.hostInterface = redirect.HostInterface
	}
	sockets := z.cfg.DataPath.sockets()
	if z.listen == nil {
		z.listen = func(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
			return sockets.ListenTransparent(ctx, addr.String())
		}
	}
	if z.dialT == nil {
		z.dialT = sockets.DialTransparent
	}
	return nil
}

// readReady reads what c has already received into buf without waiting for more:
// 0 when nothing is there yet (or at EOF or an error, which c's next Read reports).
// Raw: this is the first system call of a connection's burst, and the runtime's own
// path would wake sysmon (internal/sockio).
func readReady(c net.Conn, buf []byte) int {
	r, ok := sockio.Of(c)
	if !ok {
		return 0
	}
	return r.ReadReady(buf)
}
