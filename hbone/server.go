package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/internal/workers"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Handler serves one accepted CONNECT stream.
type Handler interface{ ServeHBONE(s *Stream) }

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(s *Stream)

// ServeHBONE calls f(s).
func (f HandlerFunc) ServeHBONE(s *Stream) { f(s) }

// ServerConfig configures a Server.
type ServerConfig struct {
	TLSConfig                 *tls.Config   // required; must require and verify client certificates
	Handler                   Handler       // required
	IdleTimeout               time.Duration // default 10m
	PingInterval, PingTimeout time.Duration // default 30s / 10s; negative interval disables
	MaxConcurrentStreams      uint32        // per connection; default 1000
	HandshakeTimeout          time.Duration // default 10s
	// Records picks the TLS record layer (default RecordsOwn, hbone's own). Clients
	// may pick either: the wire protocol is the same.
	Records RecordLayer
	Logger  *slog.Logger
}

// ConnectRequest is a validated CONNECT request.
type ConnectRequest struct {
	Authority             string         // raw :authority
	Target                netip.AddrPort // parsed authority
	Forwarded             netip.AddrPort // `for=` of the Forwarded header; zero if absent or malformed
	ForwardedHost         string         // `host=` of the Forwarded header
	Header                http.Header    // regular headers (traceparent, baggage, ...)
	EarlyData             bool           // the client sends without waiting for the answer (header ambit-early-data: 1)
	Peer                  spiffeid.ID    // client SPIFFE ID from its verified certificate
	PeerCertificates      []*x509.Certificate
	LocalAddr, RemoteAddr net.Addr // of the underlying TCP connection
}

// Stream is a server-side CONNECT stream. The handler answers it with Accept
// or Reject; after Accept it is a net.Conn with CloseWrite and CloseRead. The
// stream is closed when ServeHBONE returns (503 if it was never answered).
type Stream struct{ *stream }

// Request returns the validated request.
func (s *Stream) Request() *ConnectRequest { return s.req }

var status200 = []hpack.HeaderField{{Name: ":status", Value: "200"}}

// answerHold bounds how long Accept holds back the 200 of an early request; a
// variable for tests.
var answerHold = 100 * time.Millisecond

// headerEarlyData marks a request whose client sends without waiting for the answer
// (DialEarly). Other clients do not send it, and other servers ignore it.
const headerEarlyData = "ambit-early-data"

// Accept answers 200: the tunnel is open in both directions.
//
// A client that sent data with its request, or said it would not wait for the answer
// (DialEarly), has the 200 held until the stream's first frame (data, END_STREAM or a
// reset) and leaves in the same write, or for answerHold if nothing comes: for a
// request/response exchange that is one write here, and one read and wake-up at the
// client, less per connection. A client that waits for the 200 (Istio's ztunnel, Dial)
// sends no data before it and gets it at once.
func (s *Stream) Accept() error {
	st := s.stream
	st.mu.Lock()
	switch {
	case st.answered:
		st.mu.Unlock()
		return errAlreadyAnswer
	case st.closed:
		st.mu.Unlock()
		return net.ErrClosed
	case st.localEnd:
		err := st.wErr
		st.mu.Unlock()
		return err
	}
	st.answered = true
	st.canSend = true
	if st.rlen > 0 || s.req.EarlyData {
		st.holdAnswer = true
		st.answerTimer = time.AfterFunc(answerHold, st.answerHeld)
		st.mu.Unlock()
		return nil
	}
	ok := st.pushHeadersLocked(status200, false)
	st.mu.Unlock()
	if !ok {
		return st.c.closeErr() // takes c.mu: never while holding st.mu
	}
	st.c.writeNow() // the handler's goroutine writes the 200 itself: no hand-off
	return nil
}

// Reject answers code with END_STREAM and stops the client's request stream.
// msg is logged, not sent.
func (s *Stream) Reject(code int, msg string) error {
	if code < 200 || code > 999 || code == http.StatusOK {
		return fmt.Errorf("hbone: reject: invalid status %d", code)
	}
	return s.stream.reject(code, msg)
}

func (st *stream) reject(code int, msg string) error {
	st.mu.Lock()
	if st.answered {
		st.mu.Unlock()
		return errAlreadyAnswer
	}
	st.answered = true
	if st.localEnd {
		st.mu.Unlock()
		return st.wErr
	}
	st.localEnd = true
	ok := st.sendHeadersLocked([]hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(code)}}, true)
	if !st.remoteEnd {
		// RFC 9113 8.1: the response is complete, stop the request body.
		st.c.enqueue(wreq{kind: wRST, streamID: st.id, val: uint32(http2.ErrCodeNo)})
		st.setREndLocked(errNotAccepted)
	}
	st.mu.Unlock()
	st.c.log.Debug("hbone stream rejected", "stream", st.id, "status", code, "reason", msg)
	st.wakeReader()
	st.c.removeIfDone(st)
	if !ok {
		return st.c.closeErr()
	}
	return nil
}

// Server accepts HBONE connections.
type Server struct {
	cfg    ServerConfig
	tlsCfg *tls.Config
	log    *slog.Logger

	mu        sync.Mutex
	closed    bool
	shutdown  bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup
	ctx       context.Context
	cancel    context.CancelFunc
	workers   *workers.Pool // runs the stream handlers
}

var errServerClosed = errors.New("hbone: server closed")

// NewServer validates cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("hbone: server config: TLSConfig is required")
	}
	if cfg.Handler == nil {
		return nil, errors.New("hbone: server config: Handler is required")
	}
	if err := cfg.Records.check(); err != nil {
		return nil, fmt.Errorf("hbone: server config: %w", err)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 30 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 10 * time.Second
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = serverMaxStreams
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		tlsCfg:    hboneTLS(cfg.TLSConfig),
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		ctx:       ctx,
		cancel:    cancel,
		workers:   workers.New(64),
	}, nil
}

// Serve accepts connections on l until Shutdown or Close, then returns
// net.ErrClosed.
func (srv *Server) Serve(l net.Listener) error {
	srv.mu.Lock()
	if srv.closed || srv.shutdown {
		srv.mu.Unlock()
		return net.ErrClosed
	}
	srv.listeners[l] = struct{}{}
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.listeners, l)
		srv.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			srv.mu.Lock()
			done := srv.closed || srv.shutdown
			srv.mu.Unlock()
			if done {
				return net.ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("hbone: accept: %w", err)
		}
		backoff = 0
		srv.wg.Add(1)
		go func() {
			defer srv.wg.Done()
			srv.ServeConn(srv.ctx, nc)
		}()
	}
}

// ServeConn serves one accepted TCP connection (TLS handshake included) and
// returns when it is closed and its handlers have returned.
func (srv *Server) ServeConn(ctx context.Context, nc net.Conn) {
	hctx, cancel := context.WithTimeout(ctx, srv.cfg.HandshakeTimeout)
	rl, st, err := handshake(hctx, nc, srv.tlsCfg, false, srv.cfg.Records)
	cancel()
	if err != nil {
		srv.log.Debug("hbone tls handshake failed", "remote", nc.RemoteAddr().String(), "error", err)
		return
	}
	peer, perr := identity.PeerID(st)
	certs := st.PeerCertificates
	if perr != nil {
		srv.log.Debug("hbone peer without spiffe id", "remote", nc.RemoteAddr().String(), "error", perr)
	}
	pi := srv.cfg.PingInterval
	if pi < 0 {
		pi = 0
	}
	c := newConn(rl, connOptions{
		idleTimeout:  srv.cfg.IdleTimeout,
		pingInterval: pi,
		pingTimeout:  srv.cfg.PingTimeout,
		log:          srv.log.With("remote", nc.RemoteAddr().String()),
		peer:         peer,
		peerCerts:    certs,
		onHeaders:    srv.onHeaders,
		localStreams: srv.cfg.MaxConcurrentStreams,
	})
	srv.mu.Lock()
	if srv.closed || srv.shutdown {
		srv.mu.Unlock()
		nc.Close()
		return
	}
	srv.conns[c] = struct{}{}
	srv.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { c.closeWith(ctx.Err()) })
	c.start()
	c.run()
	stop()
	srv.mu.Lock()
	delete(srv.conns, c)
	srv.mu.Unlock()
}

// onHeaders handles a HEADERS frame on the server (read loop).
func (srv *Server) onHeaders(c *conn, f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return connError{http2.ErrCodeProtocol, "client opened an even stream id"}
	}
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		c.mu.Unlock()
		if f.StreamEnded() { // trailers
			s.onRemoteEnd()
		} else {
			s.resetLocal(http2.ErrCodeProtocol)
		}
		return nil
	}
	if id <= c.maxPeerID {
		c.mu.Unlock()
		c.enqueue(wreq{kind: wRST, streamID: id, val: uint32(http2.ErrCodeStreamClosed)})
		return nil
	}
	c.maxPeerID = id
	if c.goAwaySent || c.closed || uint32(len(c.streams)) >= c.localStreams {
		c.mu.Unlock()
		c.enqueue(wreq{kind: wRST, streamID: id, val: uint32(http2.ErrCodeRefusedStream)})
		return nil
	}
	s := newStream(c, id)
	c.streams[id] = s
	c.open.Store(int32(len(c.streams)))
	if f.StreamEnded() {
		s.remoteEnd = true
		s.rErr = errEOF()
		close(s.rDone)
	}
	c.mu.Unlock()
	c.notify()

	req, code, why := parseConnect(c, f)
	if code != 0 {
		s.reject(code, why)
		s.Close()
		return nil
	}
	s.req = req
	c.handlers.Add(1)
	srv.workers.Go(func() { srv.runHandler(s) })
	return nil
}

func (srv *Server) runHandler(s *stream) {
	defer s.c.handlers.Done()
	defer func() {
		if r := recover(); r != nil {
			srv.log.Error("hbone handler panic", "panic", fmt.Sprint(r))
		}
		s.mu.Lock()
		answered := s.answered
		s.mu.Unlock()
		if !answered {
			s.reject(http.StatusServiceUnavailable, "handler returned without answering")
		}
		s.Close()
	}()
	srv.cfg.Handler.ServeHBONE(&Stream{s})
}

// parseConnect validates a request HEADERS block. HBONE is plain CONNECT:
// only :method=CONNECT and :authority (an ip:port) are allowed.
func parseConnect(c *conn, f *http2.MetaHeadersFrame) (*ConnectRequest, int, string) {
	if f.Truncated {
		// Over SETTINGS_MAX_HEADER_LIST_SIZE, but decoded to its end (the HPACK state
		// stays in step): answered as RFC 9113 section 10.5.1 suggests.
		return nil, http.StatusRequestHeaderFieldsTooLarge, "header list too large"
	}
	var method, authority string
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":authority":
			authority = hf.Value
		default:
			return nil, http.StatusBadRequest, "unexpected pseudo header " + hf.Name
		}
	}
	if method != http.MethodConnect {
		return nil, http.StatusBadRequest, "method is not CONNECT"
	}
	if authority == "" {
		return nil, http.StatusBadRequest, "missing :authority"
	}
	target, err := parseAuthority(authority)
	if err != nil {
		return nil, http.StatusBadRequest, err.Error()
	}
	if c.peer.IsZero() {
		return nil, http.StatusUnauthorized, "client has no spiffe identity"
	}
	req := &ConnectRequest{
		Authority:        authority,
		Target:           target,
		Header:           make(http.Header, len(f.Fields)),
		Peer:             c.peer,
		PeerCertificates: c.peerCerts,
		LocalAddr:        c.nc.LocalAddr(),
		RemoteAddr:       c.nc.RemoteAddr(),
	}
	for _, hf := range f.RegularFields() {
		req.Header.Add(http.CanonicalHeaderKey(hf.Name), hf.Value)
	}
	if fwd := req.Header.Get("Forwarded"); fwd != "" {
		req.Forwarded, req.ForwardedHost = parseForwarded(fwd)
	}
	req.EarlyData = req.Header.Get(headerEarlyData) == "1"
	return req, 0, ""
}

// parseAuthority reads a CONNECT target: an IP address without zone (IPv4 not mapped
// into IPv6) and a port from 1 to 65535 written without leading zeros, which
// netip.ParseAddrPort alone accepts ("198.18.0.1:0080" for port 80).
func parseAuthority(s string) (netip.AddrPort, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return netip.AddrPort{}, errors.New("authority is not ip:port")
	}
	if port := s[i+1:]; len(port) > 1 && port[0] == '0' {
		return netip.AddrPort{}, errors.New("authority port has leading zeros")
	}
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return netip.AddrPort{}, errors.New("authority is not ip:port")
	case ap.Port() == 0:
		return netip.AddrPort{}, errors.New("authority port is 0")
	case ap.Addr().Zone() != "":
		return netip.AddrPort{}, errors.New("authority has an ipv6 zone")
	case ap.Addr().Is4In6():
		return netip.AddrPort{}, errors.New("authority is an ipv4-mapped ipv6 address")
	}
	return ap, nil
}

// parseForwarded reads for= and host= from the first element of an RFC 7239
// Forwarded header.
func parseForwarded(v string) (netip.AddrPort, string) {
	if i := strings.IndexByte(v, ','); i >= 0 {
		v = v[:i]
	}
	var addr netip.AddrPort
	var host string
	for _, pair := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			continue
		}
		val = strings.Trim(strings.TrimSpace(val), `"`)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "for":
			if ap, err := netip.ParseAddrPort(val); err == nil {
				addr = ap
			}
		case "host":
			host = val
		}
	}
	return addr, host
}

// Shutdown stops accepting, sends GOAWAY on every connection and waits for
// their streams to finish or ctx to end (then closes hard).
func (srv *Server) Shutdown(ctx context.Context) error {
	for _, c := range srv.stopAccepting(&srv.shutdown) {
		c.goAway()
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		srv.mu.Lock()
		n := len(srv.conns)
		srv.mu.Unlock()
		if n == 0 {
			srv.wg.Wait()
			srv.workers.Close()
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			srv.Close()
			return ctx.Err()
		}
	}
}

// Close closes listeners and connections immediately and waits for the
// connections served by Serve to finish. It is idempotent.
func (srv *Server) Close() error {
	conns := srv.stopAccepting(&srv.closed)
	srv.cancel()
	for _, c := range conns {
		c.closeWith(errServerClosed)
	}
	srv.wg.Wait()
	srv.workers.Close()
	return nil
}

// stopAccepting sets flag, closes the listeners and returns the connections
// open at that moment.
func (srv *Server) stopAccepting(flag *bool) []*conn {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	*flag = true
	for l := range srv.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(srv.conns))
	for c := range srv.conns {
		conns = append(conns, c)
	}
	return conns
}
