package ztunnel

import (
	"context"
	"net"
	"net/netip"

	"github.com/ambitmesh/ambit/internal/relay"
)

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// handleOutbound serves a connection captured from a local pod; its local address is the
// original destination.
func (z *Ztunnel) handleOutbound(ctx context.Context, c net.Conn) {
	rec := newRecord(dirOutbound, addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr()))
	d := z.route(z.store.Load(), rec)
	if d.action == actRefuse {
		z.refuse(c, rec, d.reason)
		return
	}
	// An early HBONE stream waits for its answer under dialCtx, and the answer may come
	// after this goroutine is done (the relay does not keep it): once the connection is
	// relayed, its end cancels dialCtx.
	dialCtx, cancel := context.WithTimeout(ctx, z.cfg.ConnectTimeout)
	if rec.balanced() {
		// Another endpoint may take it: connected before anything is relayed, answer
		// included, so a failure is not the client's.
		up, err := z.connectBalanced(dialCtx, c, rec, d)
		cancel()
		if err != nil {
			z.refuseUpstream(c, rec, err)
			return
		}
		z.proxy(c, up, rec, nil)
		return
	}
	var first []byte
	var bp *[]byte
	if d.action == actHBONE {
		// What the pod has sent already goes in the same write as the CONNECT: one read
		// and wake-up less on the peer.
		bp = relay.SmallBuffer()
		first = (*bp)[:readReady(c, *bp)]
	}
	up, err := z.open(dialCtx, rec, d, first)
	if bp != nil {
		relay.PutSmallBuffer(bp)
	}
	if err != nil {
		cancel()
		z.refuseUpstream(c, rec, err)
		return
	}
	z.proxy(c, up, rec, cancel)
}

// refuseUpstream refuses an outbound connection whose upstream did not connect,
// counted as Envoy's UF when its destination is to blame.
func (z *Ztunnel) refuseUpstream(c net.Conn, rec *record, err error) {
	if failureReason(err) != "" {
		z.m.upstreamFailed(rec)
	}
	z.refuse(c, rec, err)
}
