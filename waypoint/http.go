package waypoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/policy"
	"github.com/ambitmesh/ambit/waypoint/route"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// httpFront serves the HTTP streams: one http.Server (HTTP/1.1 and h2c prior
// knowledge) fed with the accepted CONNECT streams, each request forwarded on its own.
type httpFront struct {
	w      *Waypoint
	h1, h2 *http.Server // HTTP/1.1; h2c prior knowledge
	ln1    *chanListener
	ln2    *chanListener
	proxy  *httputil.ReverseProxy

	mu         sync.Mutex
	transports map[transportKey]*http.Transport
}

// Upstream HTTP connections carry one client's requests only: the destination ztunnel
// delivers each from the client's address, given once per connection.
type transportKey struct {
	client netip.Addr
	h2     bool
	idle   time.Duration // the cluster's idle timeout
}

// maxTransports bounds the per-client upstream pools; past it the idle ones go first.
const maxTransports = 1024

type ctxKey int

const (
	keyInbound ctxKey = iota
	keyRequest
)

// reqInfo is filled while a request is handled, for the access log and metrics.
type reqInfo struct {
	in       *inbound
	rule     *route.Rule    // the HTTPRoute rule, nil when none attaches
	backend  *route.Backend // its chosen backendRef
	redirect string
	svc      *discovery.Service // where the endpoints come from (nil: the bound workload)
	port     *discovery.ServicePort
	upstream upEndpoint
	// req is the routed request, the input of a consistent hash; cookie the one to
	// set for it.
	req      *route.Request
	cookie   *upstream.SetCookie
	tried    []*upstream.Host // endpoints attempted, Istio's previous hosts
	releases []func()         // the cluster breakers held
	flags    string
	policy   string // the deciding policy, when one denied, audited or ran dry
	grpc     bool
	body     countingBody // the request body, counted
}

// countingBody counts what is read of a request body.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

func newHTTPFront(w *Waypoint) *httpFront {
	f := &httpFront{w: w, ln1: newChanListener(), ln2: newChanListener(), transports: map[transportKey]*http.Transport{}}
	newServer := func(h2 bool) *http.Server {
		protos := new(http.Protocols)
		protos.SetHTTP1(!h2)
		protos.SetUnencryptedHTTP2(h2)
		return &http.Server{
			Handler:           http.HandlerFunc(f.handle),
			Protocols:         protos,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       time.Hour,
			MaxHeaderBytes:    60 << 10, // Envoy's max_request_headers_kb
			ErrorLog:          slog.NewLogLogger(w.log.Handler(), slog.LevelDebug),
			ConnContext: func(ctx context.Context, c net.Conn) context.Context {
				if ic, ok := c.(*inboundConn); ok {
					return context.WithValue(ctx, keyInbound, ic.in)
				}
				return ctx
			},
		}
	}
	f.h1, f.h2 = newServer(false), newServer(true)
	f.proxy = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      roundTripperFunc(f.roundTrip),
		ModifyResponse: modifyResponse,
		FlushInterval:  responseFlushInterval,
		BufferPool:     &copyBuffers,
		ErrorHandler:   f.upstreamError,
		ErrorLog:       slog.NewLogLogger(w.log.Handler(), slog.LevelDebug),
	}
	return f
}

func (f *httpFront) run() error {
	errs := make(chan error, 2)
	for srv, ln := range map[*http.Server]*chanListener{f.h1: f.ln1, f.h2: f.ln2} {
		go func() {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				err = nil
			}
			errs <- err
		}()
	}
	return errors.Join(<-errs, <-errs)
}

func (f *httpFront) shutdown(ctx context.Context) {
	_ = f.h1.Shutdown(ctx)
	_ = f.h2.Shutdown(ctx)
}

func (f *httpFront) close() {
	_ = f.h1.Close()
	_ = f.h2.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.transports {
		t.CloseIdleConnections()
	}
}

// serve hands an accepted stream to the HTTP server and returns once the server is
// done with it (the stream ends when its handler returns).
func (f *httpFront) serve(c net.Conn, in *inbound, h2 bool) {
	ic := &inboundConn{Conn: c, in: in, done: make(chan struct{})}
	ln := f.ln1
	if h2 {
		ln = f.ln2
	}
	if !ln.push(ic) {
		c.Close()
		return
	}
	<-ic.done
}

// handle routes one request and forwards it to an endpoint of the chosen backend.
// The path is normalized once; that one path is authorized, routed and forwarded.
func (f *httpFront) handle(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	in, _ := r.Context().Value(keyInbound).(*inbound)
	if in == nil {
		localReply(rw, nil, http.StatusBadRequest, "not a mesh stream")
		return
	}
	info := &reqInfo{in: in, flags: "-", grpc: strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")}
	sw := &statusWriter{ResponseWriter: rw}
	defer func() {
		info.finish()
		f.w.logRequest(r, info, sw, time.Since(start))
	}()
	if r.Body != nil && r.Body != http.NoBody {
		info.body.ReadCloser = r.Body
		r.Body = &info.body
	}

	if !validMethod(r.Method) {
		localReply(sw, info, http.StatusBadRequest, "invalid method")
		return
	}
	path, err := route.NormalizePath(rawPath(r))
	if err != nil {
		localReply(sw, info, http.StatusBadRequest, "invalid path")
		return
	}
	// The model, the bindings and the policies may have changed since the stream began.
	if in, err = f.w.refresh(in); err != nil {
		info.flags = "NR"
		localReply(sw, info, http.StatusServiceUnavailable, err.Error())
		return
	}
	info.in = in
	d := in.authorize(&policy.Request{Host: r.Host, Method: r.Method, Path: path, Headers: r.Header})
	if d.DryRun != nil || len(d.Audit) > 0 || !d.Allow {
		info.policy = d.String()
	}
	if !d.Allow {
		localReply(sw, info, http.StatusForbidden, "RBAC: access denied")
		return
	}
	req := &route.Request{Method: r.Method, Scheme: "http", Host: r.Host, Port: in.t.authority.Port(),
		Path: path, RawQuery: r.URL.RawQuery, Header: r.Header}
	info.svc, info.port = in.t.svc, in.t.port
	if code, msg := f.route(in, req, info); code != 0 {
		if info.redirect != "" {
			sw.Header().Set("Location", info.redirect)
			sw.WriteHeader(code)
			return
		}
		localReply(sw, info, code, msg)
		return
	}
	if info.rule != nil && len(info.rule.Mirrors) > 0 {
		defer f.mirror(r, req, info)()
	}
	ctx := context.WithValue(r.Context(), keyRequest, info)
	if info.rule != nil && info.rule.Timeouts.Request > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, info.rule.Timeouts.Request)
		defer cancel()
	}
	out := r.WithContext(ctx)
	out.Host = req.Host
	if err := setPath(out.URL, req.Path); err != nil {
		localReply(sw, info, http.StatusBadRequest, "invalid path")
		return
	}
	f.proxy.ServeHTTP(sw, out)
}

// validMethod refuses methods that are not upper case (as Envoy does): "get" would
// otherwise slip past a policy on GET.
func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if c := m[i]; (c < 'A' || c > 'Z') && c != '-' && c != '_' {
			return false
		}
	}
	return m != ""
}

// rawPath is the request target's path as the client sent it (net/url would already
// have escaped a '\\' that the normalization turns into '/').
func rawPath(r *http.Request) string {
	if t := r.RequestURI; strings.HasPrefix(t, "/") || strings.HasPrefix(t, "\\") {
		if i := strings.IndexAny(t, "?#"); i >= 0 {
			t = t[:i]
		}
		return t
	}
	return r.URL.EscapedPath() // absolute form, or h2 (":path" is parsed the same way)
}

// setPath puts the normalized (escaped) path on u so that it is sent exactly so.
func setPath(u *url.URL, escaped string) error {
	p, err := url.PathUnescape(escaped)
	if err != nil {
		return err
	}
	u.Path, u.RawPath = p, escaped
	return nil
}

// route applies the HTTPRoutes attached to the destination: the rule, its filters and
// backend, and the endpoint. It returns the status to answer instead of forwarding
// (0 to forward), as Envoy would: 404 NR without a matching rule, 500 for an HTTPRoute
// rule without a usable backend (503 for a GRPCRoute's), 503 UH without an endpoint,
// or a redirect.
func (f *httpFront) route(in *inbound, req *route.Request, info *reqInfo) (int, string) {
	if in.t.svc != nil {
		if rs := f.w.routesFor(in.snap).table.Lookup(in.t.svc.Namespace, in.t.svc.Name, in.t.port.Port); rs != nil {
			rule, ok := rs.Match(req)
			if !ok {
				info.flags = "NR"
				return http.StatusNotFound, "no route"
			}
			info.rule = rule
			if red := rule.ApplyRequest(req); red != nil {
				info.redirect = red.Location
				return red.StatusCode, ""
			}
			// An HTTPRoute's unusable backend is answered 500; a GRPCRoute's is
			// UNAVAILABLE (the specification's words), so 503.
			unusable := http.StatusInternalServerError
			if rule.Kind == route.KindGRPCRoute {
				unusable = http.StatusServiceUnavailable
			}
			b, ok := rule.Pick(rand.Uint64())
			if !ok || b.Invalid != nil {
				return unusable, "no valid backend"
			}
			svc := in.snap.ServiceByName(b.Namespace, b.Name)
			if svc == nil || svc.Port(b.Port) == nil {
				return unusable, "backend not found"
			}
			b.ApplyRequest(req.Header)
			info.backend, info.svc, info.port = b, svc, svc.Port(b.Port)
		}
	}
	info.req = req
	up, err := f.w.upstreamOf(in, info.svc, info.port, req, nil)
	info.upstream = up.upEndpoint
	if err != nil {
		info.flags = "UH"
		return http.StatusServiceUnavailable, "no healthy upstream"
	}
	info.cookie = up.cookie
	if !info.startRequest() {
		info.flags = "UO"
		return http.StatusServiceUnavailable, "upstream overflow"
	}
	return 0, ""
}

// rewrite aims the outbound request at the chosen endpoint, keeping Host.
func rewrite(pr *httputil.ProxyRequest) {
	if info, ok := pr.In.Context().Value(keyRequest).(*reqInfo); ok {
		pr.Out.URL.Scheme = "http"
		pr.Out.URL.Host = info.upstream.addr.String()
		pr.Out.Close = info.connSpent(1) // maxRequestsPerConnection 1: no keep-alive upstream
	}
	pr.Out.Host = pr.In.Host
}

// modifyResponse applies the route's response filters (the backend's first).
func modifyResponse(resp *http.Response) error {
	info, ok := resp.Request.Context().Value(keyRequest).(*reqInfo)
	if !ok {
		return nil
	}
	if info.rule != nil {
		if info.backend != nil {
			info.backend.ApplyResponse(resp.Header)
		}
		info.rule.ApplyResponse(resp.Header)
	}
	if info.cookie != nil {
		resp.Header.Add("Set-Cookie", setCookieLine(info.cookie))
	}
	return nil
}

// roundTrip sends the outbound request over the client's own upstream pool: each
// attempt on an endpoint its cluster picks (never one already tried while another is
// healthy), its result fed to outlier detection; connect failures, refused streams and
// gRPC UNAVAILABLE/CANCELLED are retried (Istio's default), and with an HTTPRoute retry
// the listed status codes when the request body can be replayed, after Envoy's
// jittered back-off and within the cluster's retry breaker.
func (f *httpFront) roundTrip(r *http.Request) (*http.Response, error) {
	info, _ := r.Context().Value(keyRequest).(*reqInfo)
	if info == nil {
		return nil, errors.New("request without routing information")
	}
	rp := retryPolicyOf(info.rule)
	var perTry time.Duration
	if info.rule != nil {
		perTry = info.rule.Timeouts.BackendRequest
	}
	r, err := bufferBody(r)
	if err != nil {
		return nil, err
	}
	// A body streamed upstream cannot be sent again: its request is not retried, not
	// even after a connect failure (the Transport has closed it).
	replayable := r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
	if !replayable {
		rp.retries = 0
	}
	h2 := protocolOf(info.port) == protoHTTP2 || r.ProtoMajor == 2
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if !f.w.nextAttempt(r.Context(), info, rp, attempt) {
				info.flags = "URX"
				if err == nil {
					return nil, errRetriesExhausted
				}
				return nil, err
			}
			r.URL.Host = info.upstream.addr.String()
			if r.GetBody != nil {
				if r.Body, err = r.GetBody(); err != nil {
					return nil, err
				}
			}
		}
		try, cancel := r, context.CancelFunc(func() {})
		if perTry > 0 {
			var ctx context.Context
			ctx, cancel = context.WithTimeout(r.Context(), perTry)
			try = r.WithContext(ctx)
		}
		if max := info.maxPerConn(); max > 1 && !h2 {
			try = closeAfter(try, max)
		}
		end := info.startAttempt()
		var resp *http.Response
		resp, err = f.transport(info.in.client, h2, info.idleTimeout()).RoundTrip(try)
		if err != nil {
			end(upstream.Result{Local: localOrigin(err)})
			cancel()
			if (errors.Is(err, errDial) || refusedStream(err)) && attempt < rp.retries {
				continue
			}
			if attempt > 0 {
				info.flags = "URX"
			}
			return nil, err
		}
		if attempt < rp.retries && (retryableGRPC(resp.Header) || slices.Contains(rp.codes, resp.StatusCode)) {
			end(upstream.Result{Status: resp.StatusCode})
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			cancel()
			continue
		}
		if attempt > 0 && slices.Contains(rp.codes, resp.StatusCode) {
			info.flags = "URX"
		}
		resp.Body = &endBody{ReadCloser: resp.Body, end: func() { end(upstream.Result{Status: resp.StatusCode}) }, cancel: cancel}
		return resp, nil
	}
}

// countedConn is an upstream HTTP/1.1 connection of a cluster with
// maxRequestsPerConnection: it counts the requests sent on it.
type countedConn struct {
	net.Conn
	requests atomic.Uint32
}

// closeAfter makes r the last request of its connection (sent with "Connection:
// close") when the connection it gets has carried max requests with it.
func closeAfter(r *http.Request, max uint32) *http.Request {
	r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
		GotConn: func(gi httptrace.GotConnInfo) {
			if cc, ok := gi.Conn.(*countedConn); ok && cc.requests.Add(1) >= max {
				// The header map is shared with the Transport's copy of r, which it
				// writes after GotConn; the answer's "Connection: close" ends the reuse.
				r.Header.Set("Connection", "close")
			}
		},
	}))
	return r
}

// errRetriesExhausted: the retry breaker or the request's deadline stopped a retry.
var errRetriesExhausted = errors.New("upstream retries exhausted")

// endBody reports the attempt's result and ends its per-try context when the response
// body is done: an endpoint's active request lasts until then (LEAST_REQUEST).
type endBody struct {
	io.ReadCloser
	end    func()
	cancel context.CancelFunc
}

func (b *endBody) Close() error {
	err := b.ReadCloser.Close()
	b.end()
	b.cancel()
	return err
}

func (f *httpFront) transport(client netip.AddrPort, h2 bool, idle time.Duration) *http.Transport {
	key := transportKey{client: client.Addr(), h2: h2, idle: idle}
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.transports[key]; t != nil {
		return t
	}
	if len(f.transports) >= maxTransports {
		for k, t := range f.transports {
			t.CloseIdleConnections()
			delete(f.transports, k)
			if len(f.transports) < maxTransports/2 {
				break
			}
		}
	}
	protos := new(http.Protocols)
	if h2 {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			info, _ := ctx.Value(keyRequest).(*reqInfo)
			if info == nil {
				return nil, fmt.Errorf("dial %s: no request context", addr)
			}
			ctx, cancel := context.WithTimeout(ctx, f.w.cfg.ConnectTimeout)
			defer cancel()
			c, err := f.w.dialUpstream(ctx, info.upstream, client)
			if err == nil && !h2 && info.maxPerConn() > 1 {
				c = &countedConn{Conn: c}
			}
			return c, err
		},
		Protocols:           protos,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     idle, // the DestinationRule's http.idleTimeout, Istio's hour by default
	}
	f.transports[key] = t
	return t
}

// upstreamError answers a failed forward (see failure).
func (f *httpFront) upstreamError(rw http.ResponseWriter, r *http.Request, err error) {
	info, _ := r.Context().Value(keyRequest).(*reqInfo)
	code, msg := http.StatusServiceUnavailable, ""
	if info != nil {
		code, msg = info.fail(err)
	} else {
		code, _, msg = failure(err)
	}
	f.w.log.Debug(msgUpstreamError, keyError, err.Error())
	localReply(rw, info, code, msg)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// statusWriter remembers the status code.
type statusWriter struct {
	http.ResponseWriter
	code int
	n    int64 // body bytes written
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.n += int64(n)
	return n, err
}

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// Unwrap lets http.ResponseController reach Flush and friends.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// inboundConn is an accepted stream with what its requests need.
type inboundConn struct {
	net.Conn
	in        *inbound
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

func (c *inboundConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.done) })
	return err
}

// chanListener is a net.Listener fed with connections.
type chanListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
