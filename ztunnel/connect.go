package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/internal/relay"
)

// Reasons a connect to a service endpoint failed: the reason label of
// ambit_endpoint_connect_failures_total and the access log's connect_failures.
const (
	reasonRefused     = "refused"      // the endpoint (same node, or outside the mesh) reset the TCP connect
	reasonTimeout     = "timeout"      // no connection or answer within the attempt's share of ConnectTimeout
	reasonUnreachable = "unreachable"  // no route to the endpoint
	reasonHBONE       = "hbone"        // the endpoint's ztunnel refused the tunnel or could not be authenticated
	reasonUpstream    = "upstream_503" // the endpoint's ztunnel answered 503: its connect to the pod failed
	reasonOther       = "error"
)

// errClientGone ends a connect whose client went away meanwhile: never retried.
var errClientGone = errors.New("client closed the connection before it was established")

// routeRefusal is route's refusal of the connection to another endpoint (its policy,
// its waypoint binding): no failure of an endpoint.
type routeRefusal struct{ error }

func (r routeRefusal) Unwrap() error { return r.error }

// aLongTimeAgo, as a deadline, wakes a blocked Read at once.
var aLongTimeAgo = time.Unix(1, 0)

// pending is what the client sent before its connection was established: an
// endpoint that fails never received it (its ztunnel forwards nothing before the
// pod's connect succeeded), so it goes again to the next endpoint tried.
type pending struct {
	buf  *[]byte
	n    int
	eof  bool // the client half-closed after it
	read bool // what the socket had at accept was read
}

func (p *pending) bytes() []byte { return (*p.buf)[:p.n] }

// connectBalanced opens the upstream side of rec's connection, whose destination d was
// picked among a service's endpoints, before any byte of it is relayed: an endpoint
// that does not connect is remembered as failing and another one is routed to (route
// runs again, with every per-destination check), up to Config.ConnectAttempts in all,
// within ctx (Config.ConnectTimeout), each attempt given an even share of what is
// left. The error is the last attempt's, or a refusal of route.
func (z *Ztunnel) connectBalanced(ctx context.Context, c net.Conn, rec *record, d decision) (net.Conn, error) {
	p := pending{buf: relay.SmallBuffer()}
	defer relay.PutSmallBuffer(p.buf)
	for {
		actx, cancel := z.attemptContext(ctx, rec)
		up, err := z.attempt(actx, c, rec, d, &p)
		cancel() // an HBONE stream was answered: its context no longer matters
		if err == nil {
			z.health.succeeded(rec.Dst.Addr())
			return up, nil
		}
		reason := failureReason(err)
		if reason == "" {
			return nil, err
		}
		z.health.failed(rec.Dst.Addr(), reason, time.Now())
		z.m.connectFailed(rec, reason)
		rec.failures = append(rec.failures, rec.Dst.String()+" "+reason)
		z.limits.release(rec)
		if rec.attempts >= min(z.cfg.ConnectAttempts, rec.candidates) || ctx.Err() != nil {
			return nil, err
		}
		last := err
		rec.retarget()
		if d = z.route(z.store.Load(), rec); d.action == actRefuse {
			if errors.Is(d.reason, errEndpointsTried) {
				return nil, last
			}
			return nil, routeRefusal{d.reason}
		}
	}
}

// attemptContext bounds one attempt of rec: an even share of what ctx has left among
// the attempts that may still come, so that an endpoint that never answers leaves
// time for the others.
func (z *Ztunnel) attemptContext(ctx context.Context, rec *record) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	left := min(z.cfg.ConnectAttempts, rec.candidates) - rec.attempts + 1
	if !ok || left <= 1 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Until(deadline)/time.Duration(left))
}

// attempt connects to d's endpoint and hands it what the client sent so far.
func (z *Ztunnel) attempt(ctx context.Context, c net.Conn, rec *record, d decision, p *pending) (net.Conn, error) {
	if d.action != actHBONE {
		up, err := z.open(ctx, rec, d, nil)
		if err != nil {
			return nil, err
		}
		if err := replay(up, p); err != nil {
			_ = up.Close()
			return nil, fmt.Errorf("write to %s: %w", d.target, err)
		}
		rec.Sent.Store(int64(p.n))
		return up, nil
	}
	if !p.read {
		p.read = true
		p.n = readReady(c, *p.buf)
	}
	up, err := z.open(ctx, rec, d, p.bytes())
	if err != nil {
		return nil, err
	}
	hc := up.(HBONEConn)
	if p.eof {
		_ = hc.CloseWrite()
	}
	if err := z.await(ctx, c, hc, rec, p); err != nil {
		_ = up.Close()
		return nil, err
	}
	rec.Sent.Store(int64(p.n))
	return up, nil
}

// replay writes p to an upstream connected directly (not over HBONE).
func replay(up net.Conn, p *pending) error {
	if p.n > 0 {
		if _, err := up.Write(p.bytes()); err != nil {
			return err
		}
	}
	if p.eof {
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
	}
	return nil
}

// await waits for the answer of the early HBONE stream up, meanwhile passing on
// what the client sends (and keeping it in p for another endpoint) while p has room.
// The peer holds a 200 until the pod's first bytes or a short while: the client's
// bytes must flow meanwhile, or a client-first protocol would wait that while.
func (z *Ztunnel) await(ctx context.Context, c net.Conn, up HBONEConn, rec *record, p *pending) error {
	answer := make(chan error, 1)
	go func() {
		err := up.Answer(ctx)
		_ = c.SetReadDeadline(aLongTimeAgo) // wakes the Read below
		answer <- err
	}()
	var clientErr error
	for !p.eof && p.n < len(*p.buf) {
		n, err := c.Read((*p.buf)[p.n:])
		if n > 0 {
			if _, werr := up.Write((*p.buf)[p.n : p.n+n]); werr != nil {
				p.n += n
				break // the answer says why
			}
			p.n += n
		}
		if err == io.EOF {
			p.eof = true
			_ = up.CloseWrite()
		} else if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				clientErr = err
			}
			break
		}
	}
	err := <-answer
	_ = c.SetReadDeadline(time.Time{})
	if clientErr != nil {
		return fmt.Errorf("%w: %v", errClientGone, clientErr)
	}
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("no answer in time: %w", ctx.Err()) // the stream's reset says less
	}
	return fmt.Errorf("hbone connect %s via %s: %w", rec.Dst, rec.HBONEAddr, err)
}

// failureReason classifies the error of an attempt: the reason of a connect failure
// of the endpoint, after which another may be tried; "" when the endpoint is not to
// blame (the client left, a refusal by policy or a per-peer cap, a bad request),
// which ends the connection as it is.
func failureReason(err error) string {
	var se *hbone.StatusError
	var rr routeRefusal
	switch {
	case errors.As(err, &rr), errors.Is(err, errClientGone), errors.Is(err, errPeerLimit), errors.Is(err, context.Canceled):
		return ""
	case errors.As(err, &se):
		if se.Code == http.StatusServiceUnavailable {
			return reasonUpstream
		}
		return ""
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return reasonTimeout
	case errors.Is(err, errHBONEDial):
		return reasonHBONE
	case errors.Is(err, syscall.ECONNREFUSED):
		return reasonRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return reasonUnreachable
	}
	return reasonOther
}
