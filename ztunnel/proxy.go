package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/internal/relay"
)

// errHBONEDial marks an HBONE stream that could not be opened: the peer's ztunnel
// was not reached, not authenticated, or refused the stream.
var errHBONEDial = errors.New("hbone connect")

// open carries out d, a decision to connect (not actRefuse), under ctx: the upstream
// side of rec's connection. first are bytes the client already sent, for an HBONE
// request to carry.
func (z *Ztunnel) open(ctx context.Context, rec *record, d decision, first []byte) (net.Conn, error) {
	switch d.action {
	case actHBONE:
		req := hbone.Request{
			Addr:      d.peer.String(),
			Authority: d.target.String(),
			Src:       rec.SrcID,
			Dst:       rec.DstID,
			Forwarded: rec.Src,
			Host:      rec.Service.Hostname,
		}
		// Early: the pod's first bytes follow the CONNECT without waiting for the answer
		// (one round trip less per connection); a refusal then ends the proxied
		// connection with the status as its error.
		up, err := z.pool.DialEarly(ctx, req, first)
		if err != nil {
			return nil, fmt.Errorf("%w %s via %s: %w", errHBONEDial, d.target, d.peer, err)
		}
		rec.Sent.Add(int64(len(first)))
		return up, nil
	case actPassthrough:
		up, err := z.dial(ctx, "tcp", d.target.String())
		if err != nil {
			return nil, fmt.Errorf("dial passthrough %s: %w", d.target, err)
		}
		return up, nil
	case actDeliver:
		if err := z.takeSlot(rec, limitUpstreams); err != nil {
			return nil, err
		}
		var up net.Conn
		var err error
		if d.bind.IsValid() {
			up, err = z.dialT(ctx, d.bind, d.target)
		} else {
			up, err = z.dial(ctx, "tcp", d.target.String())
		}
		if err != nil {
			return nil, fmt.Errorf("dial pod %s: %w", d.target, err)
		}
		return up, nil
	}
	return nil, fmt.Errorf("open a connection for action %d: %w", d.action, errDirection)
}

// takeSlot takes one of the per-peer slots of kind k for rec's source identity,
// counting a refusal.
func (z *Ztunnel) takeSlot(rec *record, k limitKind) error {
	err := z.limits.acquire(rec, rec.SrcID, k)
	if errors.Is(err, errPeerLimit) {
		z.m.peerLimited[k].Inc()
	}
	return err
}

// proxy relays down<->up (see relay.PumpAsync) and accounts for the connection. It
// returns when the calling goroutine's part is done, which may be before the connection
// ended; the returned channel closes when it has, after release (if not nil) ran. A
// caller whose resources the connection uses (an HBONE handler: its stream is closed
// when it returns) waits for it.
func (z *Ztunnel) proxy(down, up net.Conn, rec *record, release func()) <-chan struct{} {
	down, up = relay.Spliceable(down, up)
	z.conns.add(rec, down, up)
	series := z.m.forConn(rec)
	series.opened.Inc()
	ended := make(chan struct{})
	z.relay.PumpAsync(down, up, &rec.Sent, &rec.Received, func(err error) {
		defer close(ended)
		defer z.conns.remove(rec)
		if release != nil {
			release()
		}
		z.closed(rec, series, err)
	})
	return ended
}

// closed accounts for a relayed connection that ended with err: metrics and the
// access-log line. It may run in an HBONE read loop, so it must not block (the log
// handler buffers).
func (z *Ztunnel) closed(rec *record, series *tcpSeries, err error) {
	z.limits.release(rec)
	sent, recv := rec.Sent.Load(), rec.Received.Load()
	series.closed.Inc()
	series.sent.Add(float64(sent))
	series.received.Add(float64(recv))
	attrs := logAttrs(rec)
	attrs = append(attrs, slog.Int64(keyBytesSent, sent), slog.Int64(keyBytesRecv, recv),
		slog.String(keyDuration, timeSince(rec.Start)))
	var status *hbone.StatusError
	if errors.As(err, &status) {
		// An early-data CONNECT the peer answered with a refusal: the pod's connection was
		// already accepted and counted as opened, and it is a refusal all the same.
		z.m.refused.WithLabelValues(rec.Direction.String()).Inc()
		attrs = append(attrs, slog.String(keyReason, err.Error()))
		z.log.LogAttrs(context.Background(), slog.LevelWarn, msgRefused, attrs...)
		return
	}
	if rec.revoked.Load() {
		attrs = append(attrs, slog.String(keyReason, "closed: no longer allowed by policy"))
	} else if err != nil && !relay.IsClosed(err) {
		attrs = append(attrs, slog.String(keyError, err.Error()))
	}
	z.log.LogAttrs(context.Background(), slog.LevelInfo, msgConnection, attrs...)
}

// refuse closes c, a connection not relayed, and accounts for it. A plaintext
// client denied by policy, or kept from a destination behind a waypoint, gets a reset.
func (z *Ztunnel) refuse(c net.Conn, rec *record, reason error) {
	denied := errors.Is(reason, ErrDenied) || errors.Is(reason, errBehindWaypoint)
	if denied && !rec.MutualTLS {
		resetOnClose(c)
	}
	_ = c.Close()
	z.limits.release(rec)
	z.m.refused.WithLabelValues(rec.Direction.String()).Inc()
	if denied {
		z.m.denied(rec)
	}
	attrs := logAttrs(rec)
	attrs = append(attrs, slog.String(keyReason, reason.Error()))
	z.log.LogAttrs(context.Background(), slog.LevelWarn, msgRefused, attrs...)
}

// reject answers an inbound stream with code and refuses it.
func (z *Ztunnel) reject(s HBONEStream, rec *record, code int, reason error) {
	_ = s.Reject(code, reason.Error())
	z.refuse(s, rec, reason)
}

// logAttrs are the access-log attributes describing rec (Istio's keys), with room
// for four more.
func logAttrs(rec *record) []slog.Attr {
	attrs := make([]slog.Attr, 0, 18)
	attrs = append(attrs, slog.String(keyDirection, rec.Direction.String()),
		slog.String(keySrc, rec.Src.String()), slog.String(keyDst, rec.Dst.String()))
	for _, kv := range [...][2]string{
		{keySrcWorkload, rec.SrcWorkload.Name}, {keySrcNamespace, rec.SrcWorkload.Namespace},
		{keySrcIdentity, rec.SrcID.String()},
		{keyDstWorkload, rec.DstWorkload.Name}, {keyDstNamespace, rec.DstWorkload.Namespace},
		{keyDstIdentity, rec.DstID.String()},
		{keyDstService, rec.Service.Hostname},
	} {
		if kv[1] != "" {
			attrs = append(attrs, slog.String(kv[0], kv[1]))
		}
	}
	if rec.HBONEAddr.IsValid() {
		attrs = append(attrs, slog.String(keyDstHBONE, rec.HBONEAddr.String()))
	}
	if rec.Waypoint != "" {
		k := keySrcWaypoint
		if rec.Direction == dirOutbound {
			k = keyDstWaypoint
		}
		attrs = append(attrs, slog.String(k, rec.Waypoint))
	}
	if d := rec.decision; d.Policy != "" {
		attrs = append(attrs, slog.String(keyPolicy, d.String()))
	}
	if rec.attempts > 1 || len(rec.failures) > 0 {
		attrs = append(attrs, slog.Int(keyConnectAttempts, rec.attempts),
			slog.String(keyConnectFailures, strings.Join(rec.failures, ", ")))
	}
	return attrs
}
