package waypoint

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/policy"
	"github.com/ambitmesh/ambit/waypoint/route"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// protocol is how a bound port's traffic is handled.
type protocol uint8

const (
	protoSniff protocol = iota // unknown: HTTP if the first bytes say so, else TCP
	protoHTTP                  // HTTP/1.1, or h2c prior knowledge (told apart by its preface)
	protoHTTP2                 // HTTP/2 cleartext both ways (http2, grpc, kubernetes.io/h2c)
	protoTCP
)

// protocolOf reads the port's appProtocol, else its name's prefix, as Istio does.
func protocolOf(port *discovery.ServicePort) protocol {
	if port == nil {
		return protoSniff
	}
	p := strings.ToLower(port.AppProtocol)
	if p == "" {
		p, _, _ = strings.Cut(strings.ToLower(port.Name), "-")
	}
	switch p {
	case "http":
		return protoHTTP
	case "http2", "grpc", "grpc-web", "kubernetes.io/h2c":
		return protoHTTP2
	case "tcp", "tls", "https", "mongo", "mysql", "redis":
		return protoTCP
	}
	return protoSniff
}

// serveHBONE takes one CONNECT stream from a client's ztunnel.
func (w *Waypoint) serveHBONE(s *hbone.Stream) {
	req := s.Request()
	snap := w.store.Load()
	t, err := w.resolve(snap, req.Target)
	if err != nil {
		w.log.Warn(msgRefused, keySrc, req.RemoteAddr.String(), keyAuthority, req.Authority, keyIdentity, req.Peer.String(), keyReason, err.Error())
		_ = s.Reject(http.StatusBadRequest, err.Error())
		return
	}
	client := w.clientAddr(snap, req)
	if err := s.Accept(); err != nil {
		return
	}
	ctx := context.Background()
	in := &inbound{t: t, client: client, peer: req.Peer.String(), snap: snap, policies: w.policiesFor(snap, t),
		clientStr: client.String(), authorityStr: t.authority.String()}
	declared := protocolOf(t.port)
	if declared == protoTCP {
		w.forwardTCP(ctx, s, in, nil)
		return
	}
	// HTTP/1 or the HTTP/2 preface, told apart by the first bytes (a declared HTTP port
	// is served as HTTP whatever comes, so garbage gets its 400).
	got, first := sniff(s)
	if declared == protoSniff && got == wireOther {
		w.forwardTCP(ctx, s, in, first)
		return
	}
	var c net.Conn = s
	if len(first) > 0 {
		c = &prefixConn{Conn: s, prefix: first}
	}
	if got == wireH1 && w.fast != nil {
		w.fast.serve(c, in)
		return
	}
	w.front.serve(c, in, got == wireH2)
}

// inbound is what a stream's requests share: where it was addressed and who sent it.
type inbound struct {
	t      target
	client netip.AddrPort
	peer   string
	snap   *discovery.Snapshot
	// policies are the AuthorizationPolicies attached to this waypoint and the
	// destination Service (targetRefs).
	policies *policy.Applied
	obs      obsCache // the request metrics' series of this stream
	// The access log's strings of client and t.authority, made once per stream, and
	// of the last upstream endpoint (see upstreamStr).
	clientStr, authorityStr string
	lastUp                  atomic.Pointer[upStr]
}

type upStr struct {
	addr netip.AddrPort
	s    string
}

// upstreamStr is addr.String(), remembered for the stream's next requests (most go to
// the same endpoint); streams of HTTP/2 share it between goroutines, hence the atomic.
func (in *inbound) upstreamStr(addr netip.AddrPort) string {
	if u := in.lastUp.Load(); u != nil && u.addr == addr {
		return u.s
	}
	u := &upStr{addr: addr, s: addr.String()}
	in.lastUp.Store(u)
	return u.s
}

// refresh returns in as of the current model: a request of a long-lived stream is
// resolved, authorized and routed with what is in force now, not when the stream began.
func (w *Waypoint) refresh(in *inbound) (*inbound, error) {
	snap := w.store.Load()
	if snap == in.snap {
		return in, nil
	}
	t, err := w.resolve(snap, in.t.authority)
	if err != nil {
		return nil, err
	}
	return &inbound{t: t, client: in.client, peer: in.peer, snap: snap, policies: w.policiesFor(snap, t),
		clientStr: in.clientStr, authorityStr: in.authorityStr}, nil
}

// policiesFor returns the policies this waypoint enforces for t: selected once per
// model version and destination (a walk of every AuthorizationPolicy), not per stream.
func (w *Waypoint) policiesFor(snap *discovery.Snapshot, t target) *policy.Applied {
	var ns, name string
	if t.svc != nil {
		ns, name = t.svc.Namespace, t.svc.Name
	}
	r := w.routesFor(snap)
	key := ns + "/" + name
	if p, ok := r.policies.Load(key); ok {
		return p.(*policy.Applied)
	}
	p, _ := r.policies.LoadOrStore(key, snap.Policies.ForWaypoint(w.cfg.Namespace, w.cfg.Name, w.cfg.WaypointClass, ns, name))
	return p.(*policy.Applied)
}

// authorize decides a stream (r nil: TCP, the policies' HTTP fields cannot match) or
// a request of it.
func (in *inbound) authorize(r *policy.Request) policy.Decision {
	return in.policies.Evaluate(&policy.Input{
		Principal: strings.TrimPrefix(in.peer, "spiffe://"),
		SrcIP:     in.client.Addr(),
		DstIP:     in.t.authority.Addr(),
		DstPort:   in.t.authority.Port(),
		HTTP:      r,
	})
}

// sniffTimeout bounds the wait for a client's first bytes; a server-first protocol
// on an undeclared port is then forwarded as TCP.
const sniffTimeout = 5 * time.Second

// wire is what a stream's first bytes are.
type wire uint8

const (
	wireOther wire = iota // neither: TCP, or garbage on an HTTP port
	wireH1                // an HTTP/1 request line
	wireH2                // the HTTP/2 connection preface (h2c prior knowledge)
)

// sniff reads the first bytes of c until it can tell an HTTP/1 request line, the
// HTTP/2 preface or anything else (nothing within sniffTimeout is anything else). It
// returns what it read.
func sniff(c net.Conn) (wire, []byte) {
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 64)
	tmp := make([]byte, 64)
	for len(buf) < len(h2Preface) {
		n, err := c.Read(tmp[:cap(buf)-len(buf)])
		buf = append(buf, tmp[:n]...)
		if p, sure := classify(buf); sure {
			return p, buf
		}
		if err != nil {
			break
		}
	}
	p, _ := classify(buf)
	return p, buf
}

var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// classify says what b starts and whether it is sure.
func classify(b []byte) (wire, bool) {
	if len(b) == 0 {
		return wireOther, false
	}
	if bytes.HasPrefix(h2Preface, b) {
		return wireH2, len(b) >= len(h2Preface)
	}
	if bytes.HasPrefix(b, h2Preface) {
		return wireH2, true
	}
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		for _, c := range b {
			if c < 'A' || c > 'Z' {
				return wireOther, true
			}
		}
		return wireOther, len(b) > 16 // still a possible method token
	}
	for _, c := range b[:sp] {
		if c < 'A' || c > 'Z' {
			return wireOther, true
		}
	}
	return wireH1, sp > 0
}

// prefixConn replays bytes read while sniffing.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the stream underneath.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("prefix conn: no half-close")
}

// forwardTCP relays a non-HTTP stream to an endpoint of its destination.
func (w *Waypoint) forwardTCP(ctx context.Context, s net.Conn, in *inbound, first []byte) {
	start := time.Now()
	if d := in.authorize(nil); !d.Allow {
		s.Close()
		w.log.Warn(msgDenied, keySrc, in.client.String(), keyIdentity, in.peer, keyAuthority, in.t.authority.String(), keyPolicy, d.String())
		return
	}
	up, c, err := w.connectTCP(ctx, in)
	if err == nil {
		{
			if len(first) > 0 {
				if _, err = c.Write(first); err != nil {
					c.Close()
				}
			}
			if err == nil {
				t := &tcpStream{in: in, closers: [2]net.Conn{s, c}}
				w.tcp.add(t)
				defer w.tcp.remove(t)
				var sent, recv atomic.Int64
				sent.Add(int64(len(first)))
				if up.cluster != nil {
					if idle := up.cluster.Policy().Limits.TCPIdleTimeout; idle > 0 {
						stop := closeWhenIdle(idle, &sent, &recv, s, c)
						defer stop()
					}
				}
				err = w.relay.Pump(s, c, &sent, &recv)
				w.log.Info(msgTCP, keySrc, in.client.String(), keyIdentity, in.peer, keyAuthority, in.t.authority.String(),
					keyUpstream, up.addr.String(), keyBytesSent, sent.Load(), keyBytesRecv, recv.Load(), keyDuration, time.Since(start).String())
				return
			}
		}
	}
	s.Close()
	w.log.Warn(msgTCPFailed, keySrc, in.client.String(), keyIdentity, in.peer, keyAuthority, in.t.authority.String(), keyError, err.Error())
}

// closeWhenIdle closes conns once neither counter moved for idle (a DestinationRule's
// tcp.idleTimeout, Istio's hour by default); stop ends the watch.
func closeWhenIdle(idle time.Duration, sent, recv *atomic.Int64, conns ...net.Conn) (stop func()) {
	var mu sync.Mutex
	var t *time.Timer
	last := sent.Load() + recv.Load()
	var check func()
	check = func() {
		mu.Lock()
		defer mu.Unlock()
		if t == nil {
			return // stopped
		}
		if n := sent.Load() + recv.Load(); n != last {
			last = n
			t = time.AfterFunc(idle, check)
			return
		}
		for _, c := range conns {
			_ = c.Close()
		}
	}
	mu.Lock()
	t = time.AfterFunc(idle, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if t != nil {
			t.Stop()
			t = nil
		}
	}
}

// connectTCP connects a TCP stream to an endpoint of its destination, trying up to
// defaultRetries more endpoints after connect failures (never one already tried while
// another is healthy); connect failures count for outlier detection, as in Envoy.
func (w *Waypoint) connectTCP(ctx context.Context, in *inbound) (upEndpoint, net.Conn, error) {
	var tried []*upstream.Host
	for attempt := 0; ; attempt++ {
		up, err := w.upstreamOf(in, in.t.svc, in.t.port, nil, tried)
		if err != nil {
			return up.upEndpoint, nil, err
		}
		var done func(upstream.Result)
		if up.host != nil {
			tried = append(tried, up.host)
			done = up.host.Start()
		}
		dctx, cancel := context.WithTimeout(ctx, w.cfg.ConnectTimeout)
		c, err := w.dialUpstream(dctx, up.upEndpoint, in.client)
		cancel()
		if done != nil {
			r := upstream.Result{}
			if err != nil {
				r.Local = localOrigin(err)
			}
			done(r) // TCP: the connect is the request
		}
		if err == nil || !errors.Is(err, errDial) || attempt >= defaultRetries || up.host == nil {
			return up.upEndpoint, c, err
		}
	}
}

// upstreamOf picks where traffic goes when no route says otherwise: an endpoint of
// svc's port, or (svc nil) the bound workload itself.
// req is the routed request (nil for TCP), tried the endpoints it already failed on.
func (w *Waypoint) upstreamOf(in *inbound, svc *discovery.Service, port *discovery.ServicePort, req *route.Request, tried []*upstream.Host) (upstreamPick, error) {
	if svc != nil {
		return w.pickEndpoint(in, svc, port, req, tried)
	}
	return upstreamPick{upEndpoint: upEndpoint{addr: in.t.authority, workload: in.t.workload}}, nil
}
