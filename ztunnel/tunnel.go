package ztunnel

import (
	"context"
	"net"

	"github.com/ambitmesh/ambit/hbone"
)

// ztunnel speaks HBONE through these interfaces, not through hbone's concrete types,
// so a second transport (HBONE over HTTP/3) can stand beside the HTTP/2 one. The
// request and answer descriptions (hbone.Request, hbone.ConnectRequest,
// hbone.StatusError, hbone.PoolStats) are the protocol's and shared by both.

// HBONEDialer opens CONNECT streams to peers' ztunnels: hbone.Pool, through poolDialer.
type HBONEDialer interface {
	// DialEarly opens a stream without waiting for the peer's answer; first goes
	// with the request. A refusal ends the stream with a *hbone.StatusError.
	DialEarly(ctx context.Context, req hbone.Request, first []byte) (HBONEConn, error)
	// Stats are the dialer's open connections and streams, for the admin view.
	Stats() hbone.PoolStats
	Close() error
}

// HBONEConn is a client-side CONNECT stream: the tunnel to one destination.
type HBONEConn interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
	// Answer waits for the peer's answer to an early stream: nil for a 200, the
	// *hbone.StatusError of a refusal, the stream's error, or ctx's.
	Answer(ctx context.Context) error
}

// HBONEStream is a server-side CONNECT stream, answered with Accept or Reject; after
// Accept it carries the connection both ways. hbone.Stream is one.
type HBONEStream interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
	Request() *hbone.ConnectRequest
	Accept() error
	Reject(code int, msg string) error
}

// HBONEServer serves CONNECT streams on a listener: hbone.Server.
type HBONEServer interface {
	Serve(ln net.Listener) error
	Shutdown(ctx context.Context) error
	Close() error
}

// poolDialer is an hbone.Pool as an HBONEDialer (its DialEarly returns *hbone.Conn).
type poolDialer struct{ *hbone.Pool }

func (p poolDialer) DialEarly(ctx context.Context, req hbone.Request, first []byte) (HBONEConn, error) {
	c, err := p.Pool.DialEarly(ctx, req, first)
	if err != nil {
		return nil, err // not a typed nil
	}
	return c, nil
}
