package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
)

var (
	errNotLocalDest   = errors.New("destination is not an enrolled workload of this node")
	errAuthorityMatch = errors.New("authority does not name the workload this connection was sent to")
)

// localWorkload returns the enrolled workload of this node that owns ip.
func (z *Ztunnel) localWorkload(snap *discovery.Snapshot, ip netip.Addr) (*discovery.Workload, error) {
	w := snap.WorkloadByIP(ip)
	if w == nil || w.Node != z.cfg.NodeName || !w.Enrolled {
		return nil, fmt.Errorf("%s: %w", ip, errNotLocalDest)
	}
	return w, nil
}

// pickServerIdentity chooses the certificate for an inbound HBONE handshake: the
// transparent socket's local address is the destination pod, and ztunnel answers as it.
func (z *Ztunnel) pickServerIdentity(hello *tls.ClientHelloInfo) (spiffeid.ID, error) {
	if hello.Conn == nil {
		return spiffeid.ID{}, errors.New("no connection in client hello")
	}
	local := addrPortOf(hello.Conn.LocalAddr())
	w, err := z.localWorkload(z.store.Load(), local.Addr())
	if err != nil {
		return spiffeid.ID{}, err
	}
	return identity.WorkloadID(z.td, w.Namespace, w.ServiceAccount)
}

// serveHBONE handles one CONNECT stream addressed to a local pod.
func (z *Ztunnel) serveHBONE(s *hbone.Stream) {
	req := s.Request()
	local := addrPortOf(req.LocalAddr)
	ci := &connInfo{ConnInfo: ConnInfo{
		Direction:   "inbound",
		Src:         addrPortOf(req.RemoteAddr).String(),
		Dst:         req.Target.String(),
		SrcIdentity: req.Peer.String(),
		Security:    "mutual_tls",
	}}
	snap := z.store.Load()
	dstW, err := z.localWorkload(snap, local.Addr())
	if err != nil {
		z.reject(s, ci, hbone.StatusFor(hbone.ErrBadRequest), err)
		return
	}
	ci.DstWorkload = dstW.Namespace + "/" + dstW.Name
	dstID, err := identity.WorkloadID(z.td, dstW.Namespace, dstW.ServiceAccount)
	if err != nil {
		z.reject(s, ci, hbone.StatusFor(hbone.ErrBadRequest), err)
		return
	}
	ci.DstIdentity = dstID.String()
	// A pooled HBONE connection was authenticated once, at its handshake. Each new stream
	// also needs the destination identity to still be held: a revoked identity (say, its
	// SPIRE entry was deleted) must not keep accepting connections over old tunnels.
	if err := z.identityHeld(dstID); err != nil {
		z.reject(s, ci, hbone.StatusFor(hbone.ErrUpstream), err)
		return
	}
	if !hasIP(dstW, req.Target.Addr()) {
		z.reject(s, ci, hbone.StatusFor(hbone.ErrBadRequest), fmt.Errorf("%s for %s: %w", req.Target, local.Addr(), errAuthorityMatch))
		return
	}

	// Preserve the client's address only when the authenticated peer really owns it;
	// otherwise a compromised node could make traffic appear to come from any pod.
	srcIP := netip.Addr{}
	if req.Forwarded.IsValid() {
		if fw := snap.WorkloadByIP(req.Forwarded.Addr()); fw != nil {
			if id, err := identity.WorkloadID(z.td, fw.Namespace, fw.ServiceAccount); err == nil && id == req.Peer {
				srcIP = req.Forwarded.Addr()
				ci.Src = req.Forwarded.String()
				ci.SrcWorkload = fw.Namespace + "/" + fw.Name
			}
		}
		if !srcIP.IsValid() {
			z.log.Warn(msgUntrustedFwd, keySrc, req.Forwarded.String(), keySrcIdentity, req.Peer.String())
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), z.cfg.ConnectTimeout)
	defer cancel()
	var up net.Conn
	if srcIP.IsValid() {
		up, err = z.dialT(ctx, srcIP, req.Target)
	} else {
		up, err = z.dial(ctx, "tcp", req.Target.String())
	}
	if err != nil {
		z.reject(s, ci, hbone.StatusFor(hbone.ErrUpstream), fmt.Errorf("dial pod %s: %w", req.Target, err))
		return
	}
	if err := s.Accept(); err != nil {
		_ = up.Close()
		z.refuse(s, ci, fmt.Errorf("accept stream: %w", err))
		return
	}
	<-z.proxy(s, up, ci, nil) // the server closes s when this returns
}

func (z *Ztunnel) reject(s *hbone.Stream, ci *connInfo, code int, reason error) {
	_ = s.Reject(code, reason.Error())
	z.refuse(s, ci, reason)
}

// handleInboundPlain serves plaintext TCP from outside the mesh to a local enrolled pod.
func (z *Ztunnel) handleInboundPlain(ctx context.Context, c net.Conn) {
	src := addrPortOf(c.RemoteAddr())
	dst := addrPortOf(c.LocalAddr())
	ci := &connInfo{ConnInfo: ConnInfo{Direction: "inbound_plaintext", Src: src.String(), Dst: dst.String(), Security: "none"}}
	snap := z.store.Load()
	dstW, err := z.localWorkload(snap, dst.Addr())
	if err != nil {
		z.refuse(c, ci, err)
		return
	}
	ci.DstWorkload = dstW.Namespace + "/" + dstW.Name
	if w := snap.WorkloadByIP(src.Addr()); w != nil {
		ci.SrcWorkload = w.Namespace + "/" + w.Name
	}
	dctx, cancel := context.WithTimeout(ctx, z.cfg.ConnectTimeout)
	up, err := z.dialT(dctx, src.Addr(), dst)
	cancel()
	if err != nil {
		z.refuse(c, ci, fmt.Errorf("dial pod %s: %w", dst, err))
		return
	}
	z.proxy(c, up, ci, nil)
}

// ended is a context that has ended: a call given it does not wait.
var ended = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// identityHeld reports whether a currently valid certificate for id is held, waiting up
// to a second for one being fetched.
func (z *Ztunnel) identityHeld(id spiffeid.ID) error {
	// Nearly always held: ask first without a timeout context, which costs a timer per
	// connection. An ended context makes Certificate answer from what it holds.
	if _, err := z.ident.Certificate(ended, id); err == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := z.ident.Certificate(ctx, id); err != nil {
		return fmt.Errorf("identity %s: %w", id, err)
	}
	return nil
}

func hasIP(w *discovery.Workload, ip netip.Addr) bool {
	for _, a := range w.IPs {
		if a == ip {
			return true
		}
	}
	return false
}
