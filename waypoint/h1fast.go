package waypoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/ambitmesh/ambit/policy"
	"github.com/ambitmesh/ambit/waypoint/route"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// The HTTP/1.1 fast path (-datapath fast): a client stream's requests are parsed and
// forwarded here, over pooled keep-alive upstream connections, without net/http's server,
// ReverseProxy and Transport. Routing, authorization, filters, metrics and the access log
// are the std path's own code. What it does not handle is left to the std path, which
// then serves the rest of the stream: see fastPathLimits.
//
// fastPathLimits: HTTP/1.0, absolute-form or "*" targets, requests with
// Transfer-Encoding (chunked bodies), Upgrade or Expect, bodies over maxFastBody, obsolete
// header folding, gRPC, rules with mirrors, timeouts or a retry policy, and ports
// declared HTTP/2 go to the std path.
const maxFastBody = 64 << 10

// Timeouts of the fast path, the std server's.
const (
	fastIdleTimeout   = time.Hour
	fastHeaderTimeout = 30 * time.Second
)

// fastFront serves HTTP/1.1 streams on the fast path.
type fastFront struct {
	w    *Waypoint
	pool upPool
}

func newFastFront(w *Waypoint) *fastFront {
	return &fastFront{w: w, pool: upPool{idle: map[upKey][]*upConn{}}}
}

// Buffers of the fast path, pooled.
var (
	readers   = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writers   = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
	headBufs  = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
	bodyBufs  = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
	errNoBody = errors.New("request body ended early")
)

// serve handles the HTTP/1.1 requests of stream c until it ends, or hands it to the std
// path.
func (ff *fastFront) serve(c net.Conn, in *inbound) {
	br := readers.Get().(*bufio.Reader)
	br.Reset(c)
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(c)
	hb := headBufs.Get().(*[]byte)
	var reqHead head // reused by each request of the stream (its header map too)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
		bw.Reset(nil)
		writers.Put(bw)
		*hb = (*hb)[:0]
		headBufs.Put(hb)
	}()
	for {
		_ = c.SetReadDeadline(time.Now().Add(fastIdleTimeout))
		if _, err := br.Peek(1); err != nil {
			c.Close()
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(fastHeaderTimeout))
		var err error
		*hb, err = readHead(br, (*hb)[:0], maxHeadBytes)
		h := &reqHead
		if err == nil {
			err = h.parseRequest(*hb)
		}
		_ = c.SetReadDeadline(time.Time{})
		switch {
		case errors.Is(err, errFallback):
			ff.fallback(c, in, br, *hb)
			return
		case errors.Is(err, errHeadTooLarge):
			writeError(bw, http.StatusRequestHeaderFieldsTooLarge, "431 Request Header Fields Too Large")
			c.Close()
			return
		case errors.Is(err, errMalformed):
			writeError(bw, http.StatusBadRequest, "400 Bad Request")
			c.Close()
			return
		case err != nil:
			c.Close()
			return
		}
		keep, handedOver := ff.request(c, in, h, *hb, br, bw)
		if handedOver {
			return
		}
		if !keep {
			c.Close()
			return
		}
	}
}

// fallback gives the stream to the std path, the head read so far replayed first.
func (ff *fastFront) fallback(c net.Conn, in *inbound, br *bufio.Reader, head []byte) {
	prefix := make([]byte, 0, len(head)+br.Buffered())
	prefix = append(prefix, head...)
	rest, _ := br.Peek(br.Buffered())
	prefix = append(prefix, rest...)
	ff.w.front.serve(&prefixConn{Conn: c, prefix: prefix}, in, false)
}

// writeError answers a malformed request and the stream ends, as net/http's server does.
func writeError(bw *bufio.Writer, code int, body string) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n%s", code, http.StatusText(code), body)
	_ = bw.Flush()
}

// request handles one request; keep says whether the stream goes on, handedOver that
// the std path took the stream over from this request on (its head and body replayed).
func (ff *fastFront) request(c net.Conn, in *inbound, h *head, headBytes []byte, br *bufio.Reader, bw *bufio.Writer) (keep, handedOver bool) {
	start := time.Now()
	var body []byte
	fallback := func() (bool, bool) {
		ff.fallback(c, in, br, append(headBytes[:len(headBytes):len(headBytes)], body...))
		return false, true
	}
	if h.contentLength > maxFastBody || isGRPC(h.header) {
		return fallback()
	}
	w := ff.w
	rawPath, rawQuery := h.target, ""
	if i := indexAny(h.target, "?#"); i >= 0 {
		rawPath = h.target[:i]
		if h.target[i] == '?' {
			rawQuery = h.target[i+1:]
			if j := indexAny(rawQuery, "#"); j >= 0 {
				rawQuery = rawQuery[:j]
			}
		}
	}
	info := &reqInfo{in: in, flags: "-"}
	defer info.finish()
	rec := &fastRecord{method: h.method, path: rawPath}
	if p, err := url.PathUnescape(rawPath); err == nil {
		rec.path = p // the access log's path, as the std path logs it
	}
	keep = !h.closeConn
	// The body is read first (at most maxFastBody): a request answered without being
	// forwarded leaves the stream ready for the next one.
	if h.contentLength > 0 {
		bb := bodyBufs.Get().(*[]byte)
		defer func() { *bb = (*bb)[:0]; bodyBufs.Put(bb) }()
		if int64(cap(*bb)) < h.contentLength {
			*bb = make([]byte, 0, h.contentLength)
		}
		body = (*bb)[:h.contentLength]
		if _, err := io.ReadFull(br, body); err != nil {
			return false, false
		}
		info.body.n = h.contentLength
	}
	answer := func(code int, loc, msg string) {
		rec.code = code
		hdr := "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
		if loc != "" {
			hdr, msg = "Location: "+loc+"\r\n", ""
		} else {
			msg += "\n"
		}
		if !keep {
			hdr += "Connection: close\r\n"
		}
		fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n%sDate: %s\r\nContent-Length: %d\r\n\r\n%s", code, http.StatusText(code), hdr, httpDate(), len(msg), msg)
		if bw.Flush() != nil {
			keep = false
		}
		rec.sent = int64(len(msg))
		w.logFast(rec, info, time.Since(start))
	}
	if !validMethod(h.method) {
		answer(http.StatusBadRequest, "", "invalid method")
		return keep, false
	}
	path, err := route.NormalizePath(rawPath)
	if err != nil {
		answer(http.StatusBadRequest, "", "invalid path")
		return keep, false
	}
	if _, err := url.PathUnescape(path); err != nil {
		answer(http.StatusBadRequest, "", "invalid path")
		return keep, false
	}
	if in, err = w.refresh(in); err != nil {
		info.flags = "NR"
		answer(http.StatusServiceUnavailable, "", err.Error())
		return keep, false
	}
	info.in = in
	d := in.authorize(&policy.Request{Host: h.host, Method: h.method, Path: path, Headers: h.header})
	if d.DryRun != nil || len(d.Audit) > 0 || !d.Allow {
		info.policy = d.String()
	}
	if !d.Allow {
		answer(http.StatusForbidden, "", "RBAC: access denied")
		return keep, false
	}
	req := &route.Request{Method: h.method, Scheme: "http", Host: h.host, Port: in.t.authority.Port(),
		Path: path, RawQuery: rawQuery, Header: h.header}
	info.svc, info.port = in.t.svc, in.t.port
	if code, msg := w.front.route(in, req, info); code != 0 {
		if info.redirect != "" {
			answer(code, info.redirect, "")
			return keep, false
		}
		answer(code, "", msg)
		return keep, false
	}
	if r := info.rule; protocolOf(info.port) == protoHTTP2 ||
		(r != nil && (len(r.Mirrors) > 0 || r.Timeouts.Request > 0 || r.Timeouts.BackendRequest > 0 || r.Retry != nil)) {
		return fallback() // see fastPathLimits
	}
	te := h.header["Te"]
	removeHopHeaders(h.header)
	for k := range forwardedHeaders {
		delete(h.header, k)
	}
	if httpguts.HeaderValuesContainsToken(te, "trailers") {
		h.header["Te"] = []string{"trailers"}
	}
	up, resp, end, err := ff.roundTrip(info, req, h, body)
	if err != nil {
		code, msg := info.fail(err)
		answer(code, "", msg)
		w.log.Debug(msgUpstreamError, keyError, err.Error())
		return keep, false
	}
	if info.cookie != nil {
		resp.header.Add("Set-Cookie", setCookieLine(info.cookie))
	}
	if info.backend != nil {
		info.backend.ApplyResponse(resp.header)
	}
	if info.rule != nil {
		info.rule.ApplyResponse(resp.header)
	}
	rec.code = resp.code
	ok, sent := ff.writeResponse(bw, up, resp, h.method, &keep)
	rec.sent = sent
	end(upstream.Result{Status: resp.code})
	up.requests++
	ff.pool.done(up, ok && !resp.closeConn && !info.connSpent(up.requests))
	w.logFast(rec, info, time.Since(start))
	return keep && ok, false
}

// forwardedHeaders are dropped from forwarded requests, as the std path's ReverseProxy
// (Rewrite mode) does.
var forwardedHeaders = map[string]struct{}{"Forwarded": {}, "X-Forwarded-For": {}, "X-Forwarded-Host": {}, "X-Forwarded-Proto": {}}

func isGRPC(h http.Header) bool {
	ct := h["Content-Type"]
	return len(ct) > 0 && len(ct[0]) >= 16 && ct[0][:16] == "application/grpc"
}

func indexAny(s, chars string) int {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return i
			}
		}
	}
	return -1
}

// roundTrip sends the request to an endpoint over a pooled connection and reads the
// response head; connection failures are retried on another endpoint (Istio's default,
// as on the std path, after its back-off and within the retry breaker), a reused
// connection that fails before answering once more on a new one. end reports the
// attempt's result once the response is forwarded.
func (ff *fastFront) roundTrip(info *reqInfo, req *route.Request, h *head, body []byte) (*upConn, *head, func(upstream.Result), error) {
	var lastErr error
	rp := retryPolicyOf(info.rule)
	for attempt := 0; attempt <= rp.retries; attempt++ {
		if attempt > 0 && !ff.w.nextAttempt(context.Background(), info, rp, attempt) {
			break
		}
		end := info.startAttempt()
		uc, reused, err := ff.pool.get(ff, info, false)
		if err == nil {
			var resp *head
			if resp, err = uc.send(req, h, body); err != nil && reused {
				// A pooled connection the endpoint closed meanwhile: once more on a new
				// one (whose connect failure is retried like any other).
				uc.close()
				if uc, _, err = ff.pool.get(ff, info, true); err == nil {
					resp, err = uc.send(req, h, body)
				}
			}
			if err == nil {
				return uc, resp, end, nil
			}
			if uc != nil {
				uc.close()
			}
			if !errors.Is(err, errDial) {
				end(upstream.Result{Local: localOrigin(err)})
				return nil, nil, nil, err // sent, not answered: not retried (it may have had effects)
			}
		}
		end(upstream.Result{Local: localOrigin(err)})
		lastErr = err // a connect failure (or a breaker): the next endpoint
		if !errors.Is(err, errDial) {
			return nil, nil, nil, err
		}
	}
	info.flags = "URX"
	return nil, nil, nil, lastErr
}

// writeResponse forwards the response head and body to the client; ok says the upstream
// connection is at a message boundary (reusable), sent counts body bytes.
func (ff *fastFront) writeResponse(bw *bufio.Writer, up *upConn, resp *head, method string, keep *bool) (ok bool, sent int64) {
	noBody := method == http.MethodHead || resp.code == http.StatusNoContent || resp.code == http.StatusNotModified || resp.code < 200
	untilEOF := !noBody && !resp.chunked && resp.contentLength < 0
	if untilEOF {
		*keep = false // the body ends when the upstream closes: so must the stream
	}
	trailer := resp.header["Trailer"]
	removeHopHeaders(resp.header)
	if resp.chunked && len(trailer) > 0 {
		resp.header["Trailer"] = trailer // the trailers pass through with the chunks
	}
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", resp.code, statusText(resp.code))
	if _, ok := resp.header["Date"]; !ok {
		bw.WriteString("Date: " + httpDate() + "\r\n")
	}
	_ = resp.header.Write(bw)
	if resp.chunked && !noBody {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if !*keep {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	var err error
	switch {
	case noBody:
	case resp.chunked:
		sent, err = copyChunked(bw, up.br)
	case resp.contentLength >= 0:
		sent, err = io.CopyN(bw, up.br, resp.contentLength)
	default:
		sent, err = io.Copy(bw, up.br)
		err = errors.Join(err, io.EOF) // never reusable
	}
	if ferr := bw.Flush(); ferr != nil {
		*keep = false
	}
	return err == nil, sent
}

// copyChunked forwards a chunked body (RFC 9112 7.1) with its trailers, counting data.
func copyChunked(bw *bufio.Writer, br *bufio.Reader) (int64, error) {
	var n int64
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return n, err
		}
		size, ok := chunkSize(line)
		if !ok {
			return n, errMalformed
		}
		if _, err := bw.Write(line); err != nil {
			return n, err
		}
		if size == 0 {
			for { // trailers, then the empty line
				line, err := br.ReadSlice('\n')
				if err != nil {
					return n, err
				}
				if _, err := bw.Write(line); err != nil {
					return n, err
				}
				if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
					return n, nil
				}
			}
		}
		m, err := io.CopyN(bw, br, size)
		n += m
		if err != nil {
			return n, err
		}
		crlf, err := br.ReadSlice('\n')
		if err != nil || (string(crlf) != "\r\n" && string(crlf) != "\n") {
			return n, errMalformed
		}
		if _, err := bw.Write(crlf); err != nil {
			return n, err
		}
	}
}

// chunkSize parses a chunk-size line (extensions allowed).
func chunkSize(line []byte) (int64, bool) {
	var n int64
	digits := 0
	for _, c := range line {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return n, digits > 0 && (c == ';' || c == '\r' || c == '\n' || c == ' ' || c == '\t')
		}
		if digits++; digits > 15 {
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return 0, false
}

func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "status code " + strconv.Itoa(code)
}

// httpDate is the Date header's value, remade once a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateText{unix: now, text: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	unix int64
	text string
}

var cachedDate atomic.Pointer[dateText]

// fastRecord is what the access log and metrics need of a fast-path request.
type fastRecord struct {
	method, path string
	code         int
	sent         int64
}

// upKey: an upstream connection carries one client's requests to one endpoint (the
// destination ztunnel delivers each from the client's address, given per connection).
type upKey struct {
	client netip.Addr
	addr   netip.AddrPort
}

// upConn is a keep-alive HTTP/1.1 connection to an endpoint.
type upConn struct {
	key       upKey
	c         net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	requests  uint32 // requests answered on it, for maxRequestsPerConnection
	resp      head   // the response being forwarded, reused
}

// maxIdlePerKey bounds the idle connections kept per client and endpoint.
const maxIdlePerKey = 64

// upPool holds the idle upstream connections.
type upPool struct {
	mu   sync.Mutex
	idle map[upKey][]*upConn
	n    int
}

// maxIdleUpstreams bounds the idle connections of the whole pool.
const maxIdleUpstreams = 4096

func (p *upPool) get(ff *fastFront, info *reqInfo, fresh bool) (*upConn, bool, error) {
	key := upKey{client: info.in.client.Addr(), addr: info.upstream.addr}
	for !fresh {
		p.mu.Lock()
		l := p.idle[key]
		if len(l) == 0 {
			p.mu.Unlock()
			break
		}
		uc := l[len(l)-1]
		p.idle[key] = l[:len(l)-1]
		if len(l) == 1 {
			delete(p.idle, key)
		}
		p.n--
		p.mu.Unlock()
		if time.Since(uc.idleSince) < info.idleTimeout() {
			return uc, true, nil
		}
		uc.close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), ff.w.cfg.ConnectTimeout)
	defer cancel()
	c, err := ff.w.dialUpstream(ctx, info.upstream, info.in.client)
	if err != nil {
		return nil, false, err
	}
	return &upConn{key: key, c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}, false, nil
}

// done returns uc to the pool when reusable, else closes it.
func (p *upPool) done(uc *upConn, reusable bool) {
	if uc == nil {
		return
	}
	p.mu.Lock()
	if reusable && uc.br.Buffered() == 0 && p.n < maxIdleUpstreams && len(p.idle[uc.key]) < maxIdlePerKey {
		uc.idleSince = time.Now()
		p.idle[uc.key] = append(p.idle[uc.key], uc)
		p.n++
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	uc.close()
}

func (p *upPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.idle {
		for _, uc := range l {
			uc.close()
		}
		delete(p.idle, k)
	}
	p.n = 0
}

func (uc *upConn) close() { _ = uc.c.Close() }

// send writes the request (head and body in one flush) and reads the response head,
// skipping interim (1xx) responses.
func (uc *upConn) send(req *route.Request, h *head, body []byte) (*head, error) {
	bw := uc.bw
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.Path)
	if req.RawQuery != "" {
		bw.WriteByte('?')
		bw.WriteString(req.RawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\n")
	if _, ok := h.header["User-Agent"]; !ok {
		h.header["User-Agent"] = []string{""} // as the std path: no default User-Agent
	}
	if err := writeHeader(bw, h.header); err != nil {
		return nil, err
	}
	bw.WriteString("\r\n")
	bw.Write(body)
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	hb := headBufs.Get().(*[]byte)
	defer func() { *hb = (*hb)[:0]; headBufs.Put(hb) }()
	for {
		var err error
		if *hb, err = readHead(uc.br, (*hb)[:0], maxHeadBytes); err != nil {
			return nil, err
		}
		resp := &uc.resp
		if err := resp.parseResponse(*hb); err != nil {
			return nil, err
		}
		if resp.code >= 200 || resp.code == http.StatusSwitchingProtocols {
			if resp.code == http.StatusSwitchingProtocols {
				return nil, errMalformed // no Upgrade was asked for
			}
			return resp, nil
		}
	}
}

// writeHeader writes h, leaving out empty User-Agent values (net/http's convention for
// "send none").
func writeHeader(bw *bufio.Writer, h http.Header) error {
	if ua := h["User-Agent"]; len(ua) == 1 && ua[0] == "" {
		delete(h, "User-Agent")
		defer func() { h["User-Agent"] = ua }()
	}
	return h.Write(bw)
}
