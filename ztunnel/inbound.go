package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
)

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
func (z *Ztunnel) serveHBONE(s HBONEStream) {
	req := s.Request()
	rec := hboneRecord(req.Peer, addrPortOf(req.RemoteAddr), addrPortOf(req.LocalAddr), req.Target, req.Forwarded)
	if err := z.takeSlot(rec, limitStreams); err != nil {
		z.reject(s, rec, http.StatusServiceUnavailable, err)
		return
	}
	d := z.route(z.store.Load(), rec)
	if d.action == actRefuse {
		z.reject(s, rec, d.status, d.reason)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), z.cfg.ConnectTimeout)
	defer cancel()
	up, err := z.open(ctx, rec, d, nil)
	if err != nil {
		z.reject(s, rec, hbone.StatusFor(err), err) // 503: upstream failure or peer at its limit
		return
	}
	if err := s.Accept(); err != nil {
		_ = up.Close()
		z.refuse(s, rec, fmt.Errorf("accept stream: %w", err))
		return
	}
	<-z.proxy(s, up, rec, nil) // the server closes s when this returns
}

// hboneRecord describes a CONNECT stream for target from peer, whose tunnel came
// from remote to local (a pod's :15008), claiming the client address forwarded.
func hboneRecord(peer spiffeid.ID, remote, local, target, forwarded netip.AddrPort) *record {
	rec := newRecord(dirInboundHBONE, remote, target)
	rec.SrcID = peer
	rec.HBONEAddr = local
	rec.claimedSrc = forwarded
	rec.tunnelSrc = remote
	rec.MutualTLS = true
	return rec
}

// handleInboundPlain serves plaintext TCP from outside the mesh to a local enrolled pod.
func (z *Ztunnel) handleInboundPlain(ctx context.Context, c net.Conn) {
	rec := newRecord(dirInboundPlain, addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr()))
	d := z.route(z.store.Load(), rec)
	if d.action == actRefuse {
		z.refuse(c, rec, d.reason)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, z.cfg.ConnectTimeout)
	up, err := z.open(dctx, rec, d, nil)
	cancel()
	if err != nil {
		z.refuse(c, rec, err)
		return
	}
	z.proxy(c, up, rec, nil)
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
