package hbone

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Request describes one CONNECT tunnel to open.
type Request struct {
	Addr        string         // TCP address to dial, e.g. "198.18.2.10:15008"
	Authority   string         // :authority, "ip:port" (pod) or "vip:port" (service)
	Src, Dst    spiffeid.ID    // pool key parts (source identity, expected destination identity)
	Forwarded   netip.AddrPort // original client address -> `Forwarded: for="ip:port"` (omitted if !IsValid)
	Host        string         // optional, adds host="..." to Forwarded
	Traceparent string         // optional; if empty a valid W3C traceparent is generated
	Baggage     string         // optional
}

// ClientConfig configures a Pool.
type ClientConfig struct {
	Dial              func(ctx context.Context, network, addr string) (net.Conn, error) // nil: (&net.Dialer{}).DialContext
	TLSConfig         func(src, dst spiffeid.ID) (*tls.Config, error)                   // required
	IdleTimeout       time.Duration                                                     // default 60s
	PingInterval      time.Duration                                                     // default 30s; negative disables
	PingTimeout       time.Duration                                                     // default 10s
	MaxStreamsPerConn int                                                               // default 100
	// ConnsPerDest is how many connections a (Src, Dst, Addr) may spread its concurrent
	// streams over (default 4). A new stream goes to the connection with the fewest
	// streams; when every connection already carries one and fewer than ConnsPerDest
	// exist, another is opened for it. Streams of one connection share its TLS writer
	// and read loop, so parallel flows between the same two workloads would otherwise
	// be held to one core per end.
	ConnsPerDest int
	// Records picks the TLS record layer (default RecordsOwn, hbone's own). The server
	// may pick either: the wire protocol is the same.
	Records RecordLayer
	Logger  *slog.Logger
}

// PoolStats is a snapshot of a Pool.
type PoolStats struct {
	Conns   int // open HTTP/2 connections
	Streams int // active streams over all connections
}

type poolKey struct {
	src, dst spiffeid.ID
	addr     string
}

type dialCall struct {
	done chan struct{}
	err  error
}

// Pool opens CONNECT streams over pooled HTTP/2 connections, one set of
// connections per (Src, Dst, Addr).
type Pool struct {
	cfg ClientConfig
	log *slog.Logger

	mu      sync.Mutex
	closed  bool
	conns   map[poolKey][]*conn
	keyOf   map[*conn]poolKey
	dialing map[poolKey]*dialCall
	wg      sync.WaitGroup
}

// Conn is a client CONNECT stream: a net.Conn with CloseWrite and CloseRead.
// LocalAddr and RemoteAddr are those of the underlying TCP connection.
type Conn struct{ *stream }

// NewPool validates cfg and returns an empty pool.
func NewPool(cfg ClientConfig) (*Pool, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("hbone: client config: TLSConfig is required")
	}
	if err := cfg.Records.check(); err != nil {
		return nil, fmt.Errorf("hbone: client config: %w", err)
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 30 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 10 * time.Second
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	if cfg.ConnsPerDest <= 0 {
		cfg.ConnsPerDest = 4
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{
		cfg:     cfg,
		log:     log,
		conns:   make(map[poolKey][]*conn),
		keyOf:   make(map[*conn]poolKey),
		dialing: make(map[poolKey]*dialCall),
	}, nil
}

const maxDialAttempts = 3

// Dial opens a CONNECT stream and returns it once the peer answered 200.
// Any other status is returned as a *StatusError.
func (p *Pool) Dial(ctx context.Context, req Request) (*Conn, error) {
	return p.dial(ctx, req, false, nil)
}

// DialEarly opens a CONNECT stream like Dial but returns as soon as the request
// is queued, without waiting for the answer: data written meanwhile follows the
// HEADERS at once (HTTP/2 allows it; the server holds it until its handler
// accepts), which saves a round trip per connection. A refusal or any status
// other than 200 is then returned by Read and Write (a *StatusError, matching
// ErrDenied etc.), and so is an answer that does not arrive before ctx ends.
// Errors reaching the peer (dial, TLS) are returned by DialEarly itself. Unlike
// Dial, a stream the server did not process (GOAWAY race) is not retried.
//
// first, when not empty, is the tunnel's first data: it goes out in the same
// write as the request, so the peer reads both at once (one read and one
// wake-up less on each side than a Write after DialEarly). DialEarly returns
// once first is written; the caller may reuse it then.
func (p *Pool) DialEarly(ctx context.Context, req Request, first []byte) (*Conn, error) {
	return p.dial(ctx, req, true, first)
}

// Answer waits for the peer's answer to the CONNECT: nil for a 200, a *StatusError
// for another status, the error that ended the stream before any answer came, or
// ctx's once it ends. A stream from Dial has its answer already. It lets a caller of
// DialEarly learn that the tunnel is open (or refused) without reading from it: a
// proxy that may still retry elsewhere holds the client's bytes until then.
func (c *Conn) Answer(ctx context.Context) error {
	select {
	case <-c.respCh:
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.respErr != nil:
		return c.respErr
	case c.status != http.StatusOK:
		return &StatusError{Code: c.status}
	}
	return nil
}

func (p *Pool) dial(ctx context.Context, req Request, early bool, first []byte) (*Conn, error) {
	if req.Addr == "" {
		return nil, fmt.Errorf("hbone: request: empty Addr")
	}
	if req.Authority == "" {
		return nil, fmt.Errorf("hbone: request: empty Authority")
	}
	hdrs := requestHeaders(req, early)
	var lastErr error
	for attempt := 0; attempt < maxDialAttempts; attempt++ {
		c, err := p.getConn(ctx, req)
		if err != nil {
			return nil, err
		}
		hc, err := p.roundTrip(ctx, c, hdrs, early, first)
		if err == nil {
			return hc, nil
		}
		if !errors.Is(err, errRefused) && !errors.Is(err, errGoAway) {
			return nil, err
		}
		lastErr = err // not processed by the peer: safe to retry
	}
	return nil, fmt.Errorf("hbone: connect %s via %s: %w", req.Authority, req.Addr, lastErr)
}

func (p *Pool) roundTrip(ctx context.Context, c *conn, hdrs []hpack.HeaderField, early bool, first []byte) (*Conn, error) {
	c.mu.Lock()
	c.reserved--
	if c.closed || c.goAwaySent || c.goAwayRecv || c.nextID > maxWindow {
		c.goAwaySent = c.goAwaySent || c.nextID > maxWindow
		c.mu.Unlock()
		return nil, errRefused
	}
	s := newStream(c, c.nextID)
	s.respCh = make(chan struct{})
	s.early = early
	s.canSend = early
	c.nextID += 2
	c.streams[s.id] = s
	c.open.Store(int32(len(c.streams)))
	// Queued under c.mu so stream ids go out in increasing order, written by
	// this goroutine unless someone else is writing.
	ok := c.push(wreq{kind: wHeaders, streamID: s.id, hdrs: hdrs})
	// Early data the windows take at once rides in the same write; its
	// window is taken here, under c.mu, so nothing can hold the HEADERS back.
	withFirst := early && ok && len(first) > 0 &&
		int64(len(first)) <= min(s.sendWindow, c.sendWindow, maxWriteChunk)
	if withFirst {
		s.sendWindow -= int64(len(first))
		c.sendWindow -= int64(len(first))
	}
	c.mu.Unlock()
	if !ok {
		s.connClosed(errRefused)
		return nil, errRefused
	}
	if !withFirst {
		c.writeNow()
	}
	if early {
		// An answer that does not come in time resets the stream; once it came,
		// ctx no longer matters.
		stop := context.AfterFunc(ctx, func() {
			s.mu.Lock()
			pending := !s.gotResp
			s.mu.Unlock()
			if pending {
				s.resetLocal(http2.ErrCodeCancel)
			}
		})
		s.mu.Lock()
		if s.gotResp {
			s.mu.Unlock()
			stop()
		} else {
			s.stopWait = stop
			s.mu.Unlock()
		}
		var err error
		switch {
		case withFirst:
			err = s.send(wreq{kind: wData, data: first}, len(first)) // in the HEADERS' batch
		case len(first) > 0:
			_, err = s.Write(first)
		}
		if err != nil {
			s.Close()
			return nil, err
		}
		return &Conn{s}, nil
	}
	select {
	case <-s.respCh:
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	}
	s.mu.Lock()
	status, err := s.status, s.respErr
	s.mu.Unlock()
	if err != nil {
		s.Close()
		return nil, err
	}
	if status != 200 {
		s.Close()
		return nil, &StatusError{Code: status}
	}
	return &Conn{s}, nil
}

// requestHeaders is the CONNECT request's header list. Values unique to one request
// (the client's port in forwarded, the trace id) are sent as never-indexed literals:
// indexing them would only churn both ends' HPACK dynamic tables, adding and evicting
// an entry per request (3-4 % of a busy client's CPU). An early request says so
// (headerEarlyData; one indexed byte after the first), so the server may hold its 200
// for the stream's first frame even when no data came with the request.
func requestHeaders(req Request, early bool) []hpack.HeaderField {
	h := make([]hpack.HeaderField, 0, 6)
	h = append(h, hpack.HeaderField{Name: ":method", Value: "CONNECT"},
		hpack.HeaderField{Name: ":authority", Value: req.Authority})
	if req.Forwarded.IsValid() {
		v := `for="` + req.Forwarded.String() + `"`
		if req.Host != "" {
			v += `;host="` + req.Host + `"`
		}
		h = append(h, hpack.HeaderField{Name: "forwarded", Value: v, Sensitive: true})
	}
	tp := req.Traceparent
	if tp == "" {
		tp = newTraceparent()
	}
	h = append(h, hpack.HeaderField{Name: "traceparent", Value: tp, Sensitive: true})
	if req.Baggage != "" {
		h = append(h, hpack.HeaderField{Name: "baggage", Value: req.Baggage})
	}
	if early {
		h = append(h, hpack.HeaderField{Name: headerEarlyData, Value: "1"})
	}
	return h
}

// newTraceparent returns a sampled W3C trace context with random ids.
func newTraceparent() string {
	var b [24]byte
	for i := 0; i < 24; i += 8 {
		v := rand.Uint64() | 1 // never all-zero
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// getConn returns a connection with a reserved stream slot, dialing one if
// none has room. Concurrent callers for a key share one handshake.
func (p *Pool) getConn(ctx context.Context, req Request) (*conn, error) {
	key := poolKey{req.Src, req.Dst, req.Addr}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, net.ErrClosed
		}
		best, load := p.leastLoaded(key)
		spread := best != nil && load > 0 && len(p.conns[key]) < p.cfg.ConnsPerDest && p.dialing[key] == nil
		if best != nil && !spread {
			if p.tryReserve(best) {
				p.mu.Unlock()
				return best, nil
			}
			p.mu.Unlock()
			continue // closed meanwhile
		}
		if d := p.dialing[key]; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if d.err != nil {
				if ctx.Err() == nil && (errors.Is(d.err, context.Canceled) || errors.Is(d.err, context.DeadlineExceeded)) {
					continue // the dialer gave up, not us
				}
				return nil, d.err
			}
			continue
		}
		d := &dialCall{done: make(chan struct{})}
		p.dialing[key] = d
		p.mu.Unlock()

		c, err := p.dialConn(ctx, req)
		p.mu.Lock()
		delete(p.dialing, key)
		if err != nil && spread && ctx.Err() == nil {
			// An extra connection is an optimisation: fall back to a working one.
			p.log.Debug("hbone spread dial failed", "addr", req.Addr, "error", err)
			d.err = err
			close(d.done)
			if p.tryReserve(best) {
				p.mu.Unlock()
				return best, nil
			}
			p.mu.Unlock()
			continue
		}
		d.err = err
		if err == nil && p.closed {
			err, d.err = net.ErrClosed, net.ErrClosed
			defer c.closeWith(net.ErrClosed)
		}
		var got bool
		if err == nil {
			p.conns[key] = append(p.conns[key], c)
			p.keyOf[c] = key
			got = p.tryReserve(c)
		}
		close(d.done)
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if got {
			return c, nil
		}
	}
}

// leastLoaded returns the usable connection of key with the fewest streams (p.mu held).
func (p *Pool) leastLoaded(key poolKey) (*conn, int) {
	var (
		best  *conn
		least int
	)
	for _, c := range p.conns[key] {
		c.mu.Lock()
		n := len(c.streams) + c.reserved
		ok := !c.closed && !c.goAwaySent && !c.goAwayRecv &&
			uint32(n) < min(uint32(p.cfg.MaxStreamsPerConn), c.peerMaxStreams)
		c.mu.Unlock()
		if ok && (best == nil || n < least) {
			best, least = c, n
		}
	}
	return best, least
}

func (p *Pool) tryReserve(c *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goAwaySent || c.goAwayRecv {
		return false
	}
	limit := min(uint32(p.cfg.MaxStreamsPerConn), c.peerMaxStreams)
	if uint32(len(c.streams)+c.reserved) >= limit {
		return false
	}
	c.reserved++
	return true
}

func (p *Pool) dialConn(ctx context.Context, req Request) (*conn, error) {
	tcfg, err := p.cfg.TLSConfig(req.Src, req.Dst)
	if err != nil {
		return nil, fmt.Errorf("hbone: tls config for %s: %w", req.Dst, err)
	}
	if tcfg == nil {
		return nil, fmt.Errorf("hbone: tls config for %s: nil config", req.Dst)
	}
	nc, err := p.cfg.Dial(ctx, "tcp", req.Addr)
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", req.Addr, err)
	}
	rl, st, err := handshake(ctx, nc, hboneTLS(tcfg), true, p.cfg.Records)
	if err != nil {
		return nil, fmt.Errorf("hbone: %s: %w", req.Addr, err)
	}
	peer, _ := identity.PeerID(st)
	certs := st.PeerCertificates
	pi := p.cfg.PingInterval
	if pi < 0 {
		pi = 0
	}
	c := newConn(rl, connOptions{
		client:       true,
		idleTimeout:  p.cfg.IdleTimeout,
		pingInterval: pi,
		pingTimeout:  p.cfg.PingTimeout,
		log:          p.log.With("addr", req.Addr),
		peer:         peer,
		peerCerts:    certs,
		onState:      p.connState,
	})
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		nc.Close()
		return nil, net.ErrClosed
	}
	p.wg.Add(1)
	p.mu.Unlock()
	c.start()
	go func() {
		defer p.wg.Done()
		c.run()
	}()
	// Wait for the server's SETTINGS so MAX_CONCURRENT_STREAMS is known.
	select {
	case <-c.settingsCh:
		return c, nil
	case <-c.closedCh:
		return nil, fmt.Errorf("hbone: connection to %s: %w", req.Addr, c.closeErr())
	case <-ctx.Done():
		c.closeWith(ctx.Err())
		return nil, ctx.Err()
	}
}

// connState drops closed connections from the pool.
func (p *Pool) connState(c *conn) {
	if !c.isClosed() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key, ok := p.keyOf[c]
	if !ok {
		return
	}
	delete(p.keyOf, c)
	list := p.conns[key]
	for i, x := range list {
		if x == c {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.conns, key)
	} else {
		p.conns[key] = list
	}
}

// Stats reports the pool's open connections and active streams.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	conns := make([]*conn, 0, len(p.keyOf))
	for c := range p.keyOf {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	var st PoolStats
	for _, c := range conns {
		c.mu.Lock()
		if !c.closed {
			st.Conns++
			st.Streams += len(c.streams)
		}
		c.mu.Unlock()
	}
	return st
}

// Close closes every pooled connection and waits for their goroutines. It is
// idempotent; Dial fails afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := make([]*conn, 0, len(p.keyOf))
	for c := range p.keyOf {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.closeWith(net.ErrClosed)
	}
	p.wg.Wait()
	return nil
}
