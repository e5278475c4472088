package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
)

var (
	errNotLocalSource = errors.New("source is not an enrolled workload of this node")
	errLoop           = errors.New("destination is this node (loop)")
	errNoEndpoint     = errors.New("service has no endpoints")
	errUnknownPort    = errors.New("service has no such port")
)

// route is the outcome of resolving an outbound destination.
type route struct {
	target netip.AddrPort      // where the bytes finally go (pod IP:target port, or passthrough dst)
	dstW   *discovery.Workload // nil for passthrough to an unknown destination
	svc    *discovery.Service  // set when the original destination was a service VIP
	mesh   bool                // the destination speaks HBONE
}

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
	src := addrPortOf(c.RemoteAddr())
	dst := addrPortOf(c.LocalAddr())
	ci := &connInfo{ConnInfo: ConnInfo{Direction: "outbound", Src: src.String(), Dst: dst.String(), Security: "none"}}
	snap := z.store.Load()

	srcW := snap.WorkloadByIP(src.Addr())
	if srcW == nil || srcW.Node != z.cfg.NodeName || !srcW.Enrolled {
		z.refuse(c, ci, errNotLocalSource)
		return
	}
	ci.SrcWorkload = srcW.Namespace + "/" + srcW.Name
	srcID, err := identity.WorkloadID(z.td, srcW.Namespace, srcW.ServiceAccount)
	if err != nil {
		z.refuse(c, ci, err)
		return
	}
	ci.SrcIdentity = srcID.String()

	r, err := z.resolve(snap, dst)
	if err != nil {
		z.refuse(c, ci, err)
		return
	}
	if r.svc != nil {
		ci.DstService = r.svc.Hostname
	}
	ci.Dst = r.target.String()

	if r.mesh {
		// Pooled tunnels do not re-handshake: check the source identity is still held.
		if err := z.identityHeld(srcID); err != nil {
			z.refuse(c, ci, err)
			return
		}
	}
	// An early HBONE stream waits for its answer under dialCtx, and the answer may come
	// after this goroutine is done (the relay does not keep it): once the connection is
	// relayed, its end cancels dialCtx.
	dialCtx, cancel := context.WithTimeout(ctx, z.cfg.ConnectTimeout)
	relayed := false
	defer func() {
		if !relayed {
			cancel()
		}
	}()
	var up net.Conn
	switch {
	case r.mesh && r.dstW.Node == z.cfg.NodeName:
		// Same node: no capture point sits between us and a local pod, so serve the
		// destination side here with the same identity checks as HBONE.
		ci.Direction = "local"
		ci.Security = "mutual_tls" // both ends are authenticated by this ztunnel
		dstID, err := identity.WorkloadID(z.td, r.dstW.Namespace, r.dstW.ServiceAccount)
		if err != nil {
			z.refuse(c, ci, err)
			return
		}
		ci.DstWorkload = r.dstW.Namespace + "/" + r.dstW.Name
		ci.DstIdentity = dstID.String()
		up, err = z.dialT(dialCtx, src.Addr(), r.target)
		if err != nil {
			z.refuse(c, ci, fmt.Errorf("dial local pod %s: %w", r.target, err))
			return
		}
	case r.mesh:
		dstID, err := identity.WorkloadID(z.td, r.dstW.Namespace, r.dstW.ServiceAccount)
		if err != nil {
			z.refuse(c, ci, err)
			return
		}
		ci.DstWorkload = r.dstW.Namespace + "/" + r.dstW.Name
		ci.DstIdentity = dstID.String()
		ci.Security = "mutual_tls"
		hboneAddr := netip.AddrPortFrom(r.target.Addr(), PortHBONE).String()
		ci.HBONEAddr = hboneAddr
		req := hbone.Request{
			Addr:      hboneAddr,
			Authority: r.target.String(),
			Src:       srcID,
			Dst:       dstID,
			Forwarded: src,
		}
		if r.svc != nil {
			req.Host = r.svc.Hostname
		}
		// Early: the pod's first bytes follow the CONNECT without waiting for the answer
		// (one round trip less per connection); a refusal then ends the proxied
		// connection with the status as its error. What the pod has sent already goes
		// in the same write as the CONNECT: one read and wake-up less on the peer.
		bp := smallPool.Get().(*[]byte)
		first := (*bp)[:readReady(c, *bp)]
		up, err = z.pool.DialEarly(dialCtx, req, first)
		smallPool.Put(bp)
		if err != nil {
			z.refuse(c, ci, fmt.Errorf("hbone connect %s via %s: %w", r.target, hboneAddr, err))
			return
		}
		ci.sent.n.Add(int64(len(first)))
	default:
		// Passthrough: the destination is outside the mesh. Dial from the node's own
		// address so replies route back without capture.
		if r.dstW != nil {
			ci.DstWorkload = r.dstW.Namespace + "/" + r.dstW.Name
		}
		up, err = z.dial(dialCtx, "tcp", r.target.String())
		if err != nil {
			z.refuse(c, ci, fmt.Errorf("dial passthrough %s: %w", r.target, err))
			return
		}
	}
	relayed = true
	z.proxy(c, up, ci, cancel)
}

// resolve maps an original destination to the workload and address to reach.
func (z *Ztunnel) resolve(snap *discovery.Snapshot, dst netip.AddrPort) (route, error) {
	if z.isLocalAddr(dst.Addr()) {
		return route{}, errLoop
	}
	if svc, port := snap.ServiceByVIP(dst.Addr(), dst.Port()); svc != nil {
		if port == nil {
			return route{}, fmt.Errorf("%s port %d: %w", svc.Hostname, dst.Port(), errUnknownPort)
		}
		ep, err := z.pickEndpoint(snap, svc)
		if err != nil {
			return route{}, err
		}
		tp := port.TargetPort
		if tp == 0 {
			tp = port.Port
		}
		r := route{target: netip.AddrPortFrom(ep.Addr, tp), svc: svc}
		if w := snap.WorkloadByUID(ep.WorkloadUID); w != nil {
			r.dstW = w
		} else {
			r.dstW = snap.WorkloadByIP(ep.Addr)
		}
		r.mesh = r.dstW != nil && r.dstW.Protocol == discovery.ProtocolHBONE
		return r, nil
	}
	r := route{target: dst}
	if w := snap.WorkloadByIP(dst.Addr()); w != nil {
		r.dstW = w
		r.mesh = w.Protocol == discovery.ProtocolHBONE
	}
	return r, nil
}

// pickEndpoint balances round robin over the service's endpoints.
func (z *Ztunnel) pickEndpoint(snap *discovery.Snapshot, svc *discovery.Service) (discovery.Endpoint, error) {
	if len(svc.Endpoints) == 0 {
		return discovery.Endpoint{}, fmt.Errorf("%s: %w", svc.Hostname, errNoEndpoint)
	}
	key := svc.Namespace + "/" + svc.Name
	v, _ := z.rr.LoadOrStore(key, new(atomic.Uint64))
	n := v.(*atomic.Uint64).Add(1) - 1
	return svc.Endpoints[n%uint64(len(svc.Endpoints))], nil
}

// isLocalAddr reports whether ip can only mean this host's loopback or no host at all.
// Dialing it from ztunnel would reach ztunnel's own sockets instead of what the pod meant.
// The node's own addresses are fine: ztunnel's capture listeners are bound to loopback, so
// a passthrough dial to the node reaches the node's services, as it would without the mesh.
func (z *Ztunnel) isLocalAddr(ip netip.Addr) bool {
	return ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast()
}

// proxy relays down<->up (see pumpAsync) and accounts for the connection. It returns
// when the calling goroutine's part is done, which may be before the connection ended;
// the returned channel closes when it has, after release (if not nil) ran. A caller
// whose resources the connection uses (an HBONE handler: its stream is closed when it
// returns) waits for it.
func (z *Ztunnel) proxy(down, up net.Conn, ci *connInfo, release func()) <-chan struct{} {
	down, up = spliceable(down, up)
	z.conns.add(ci, down, up)
	series := z.m.forConn(ci)
	series.opened.Inc()
	ended := make(chan struct{})
	pumpAsync(down, up, &ci.sent, &ci.recv, func(err error) {
		defer close(ended)
		defer z.conns.remove(ci)
		if release != nil {
			release()
		}
		z.closed(ci, series, err)
	})
	return ended
}

// closed accounts for a relayed connection that ended with err: metrics and the
// access-log line. It may run in an HBONE read loop, so it must not block (the log
// handler buffers).
func (z *Ztunnel) closed(ci *connInfo, series *tcpSeries, err error) {
	sent, recv := ci.sent.n.Load(), ci.recv.n.Load()
	series.closed.Inc()
	series.sent.Add(float64(sent))
	series.received.Add(float64(recv))
	attrs := z.logAttrs(ci)
	attrs = append(attrs, slog.Int64(keyBytesSent, sent), slog.Int64(keyBytesRecv, recv),
		slog.String(keyDuration, timeSince(ci.Start)))
	var status *hbone.StatusError
	if errors.As(err, &status) {
		// An early-data CONNECT the peer answered with a refusal: the pod's connection was
		// already accepted and counted as opened, and it is a refusal all the same.
		z.m.refused.WithLabelValues(ci.Direction).Inc()
		attrs = append(attrs, slog.String(keyReason, err.Error()))
		z.log.LogAttrs(context.Background(), slog.LevelWarn, msgRefused, attrs...)
		return
	}
	if err != nil && !isClosedErr(err) {
		attrs = append(attrs, slog.String(keyError, err.Error()))
	}
	z.log.LogAttrs(context.Background(), slog.LevelInfo, msgConnection, attrs...)
}

func (z *Ztunnel) refuse(c net.Conn, ci *connInfo, reason error) {
	_ = c.Close()
	z.m.refused.WithLabelValues(ci.Direction).Inc()
	attrs := z.logAttrs(ci)
	attrs = append(attrs, slog.String(keyReason, reason.Error()))
	z.log.LogAttrs(context.Background(), slog.LevelWarn, msgRefused, attrs...)
}

// logAttrs are the access-log attributes describing ci, with room for four more.
func (z *Ztunnel) logAttrs(ci *connInfo) []slog.Attr {
	attrs := make([]slog.Attr, 0, 13)
	attrs = append(attrs, slog.String(keyDirection, ci.Direction), slog.String(keySrc, ci.Src), slog.String(keyDst, ci.Dst))
	for _, kv := range [...][2]string{
		{keySrcIdentity, ci.SrcIdentity}, {keyDstIdentity, ci.DstIdentity},
		{keySrcWorkload, ci.SrcWorkload}, {keyDstWorkload, ci.DstWorkload},
		{keyDstService, ci.DstService}, {keyDstHBONE, ci.HBONEAddr},
	} {
		if kv[1] != "" {
			attrs = append(attrs, slog.String(kv[0], kv[1]))
		}
	}
	return attrs
}
