package waypoint

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/internal/serve"
	"github.com/ambitmesh/ambit/internal/yamldoc"
	"github.com/ambitmesh/ambit/policy"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func id(ns, sa string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa) }

// The model of these tests: service echo (VIP 198.19.0.1, ports 80/http and 9000/tcp)
// in namespace apps bound to waypoint apps/wp, with two endpoints; the client pod.
func testModel(tb testing.TB, manifests string, edits ...func(*discovery.Input)) *discovery.Snapshot {
	tb.Helper()
	seq := 0
	pm, probs, err := policy.ParseManifests("policies.yaml", []byte(manifests), &seq, discovery.GatewayGroup, "networking.istio.io")
	if err != nil || len(probs) > 0 {
		tb.Fatalf("policies: %v %v", err, probs)
	}
	objs, err := yamldoc.Objects("routes.yaml", []byte(manifests))
	if err != nil {
		tb.Fatal(err)
	}
	var routes discovery.Routes
	for _, o := range objs {
		switch o.Kind {
		case "HTTPRoute":
			var hr gatewayv1.HTTPRoute
			if err := o.DecodeStrict(&hr); err != nil {
				tb.Fatal(err)
			}
			routes.HTTPRoutes = append(routes.HTTPRoutes, &hr)
		case "GRPCRoute":
			var gr gatewayv1.GRPCRoute
			if err := o.DecodeStrict(&gr); err != nil {
				tb.Fatal(err)
			}
			routes.GRPCRoutes = append(routes.GRPCRoutes, &gr)
		}
	}
	var drs []*networkingv1.DestinationRule
	for _, doc := range strings.Split("\n"+manifests, "\n---") {
		if strings.Contains(doc, "kind: DestinationRule") {
			dr := &networkingv1.DestinationRule{}
			if err := sigsyaml.Unmarshal([]byte(doc), dr); err != nil {
				tb.Fatalf("DestinationRule: %v", err)
			}
			drs = append(drs, dr)
		}
	}
	ip := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	in := discovery.Input{
		Namespaces: []*discovery.Namespace{{Name: "apps", Labels: map[string]string{
			"istio.io/dataplane-mode": "ambient", discovery.LabelUseWaypoint: "wp"}}},
		Waypoints: []*discovery.Waypoint{{Name: "wp", Namespace: "apps"}},
		Workloads: []*discovery.Workload{
			{Name: "wp-0", Namespace: "apps", ServiceAccount: "wp", IPs: ip("198.18.3.10"), Labels: map[string]string{discovery.LabelGatewayName: "wp"}},
			{Name: "client", Namespace: "apps", ServiceAccount: "client", IPs: ip("198.18.1.10")},
			{Name: "echo-a", Namespace: "apps", ServiceAccount: "echo", IPs: ip("198.18.2.10"), Labels: map[string]string{"app": "echo"}},
			{Name: "echo-b", Namespace: "apps", ServiceAccount: "echo", IPs: ip("198.18.2.11"), Labels: map[string]string{"app": "echo"}},
		},
		Services: []*discovery.Service{
			{Name: "echo", Namespace: "apps", VIPs: ip("198.19.0.1"), Selector: map[string]string{"app": "echo"},
				Ports: []discovery.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "tcp", Port: 9000}}},
			{Name: "shadow", Namespace: "apps", VIPs: ip("198.19.0.3"), Selector: map[string]string{"app": "echo"},
				Labels: map[string]string{discovery.LabelUseWaypoint: discovery.UseWaypointNone}, Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}},
			{Name: "direct", Namespace: "apps", VIPs: ip("198.19.0.2"), Labels: map[string]string{discovery.LabelUseWaypoint: discovery.UseWaypointNone},
				Ports: []discovery.ServicePort{{Port: 80}}},
		},
	}
	in.Policies = policy.NewSet("", pm.Authorizations, pm.PeerAuthentications)
	in.Routes = routes
	in.DestinationRules = drs
	for _, e := range edits {
		e(&in)
	}
	s, err := discovery.Build(in, discovery.EnrollmentOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// backend is a destination ztunnel stand-in: it terminates HBONE as the endpoint's
// identity and answers HTTP (or echoes TCP), recording what each CONNECT carried.
type backend struct {
	mu       sync.Mutex
	connects []*hbone.ConnectRequest
	hosts    []string            // of the HTTP requests served
	bodies   map[string]string   // the last request body per Host
	refuse   map[netip.Addr]bool // endpoints whose "pod" refuses connections
}

// refuseFrom makes the endpoints at addrs refuse connections, as a destination ztunnel
// answers a CONNECT whose pod refused it.
func (b *backend) refuseFrom(addrs ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refuse = map[netip.Addr]bool{}
	for _, a := range addrs {
		b.refuse[netip.MustParseAddr(a)] = true
	}
}

// body is the last request body that arrived with Host h.
func (b *backend) body(h string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.bodies[h]
	return s, ok
}

func (b *backend) sawHost(h string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Contains(b.hosts, h)
}

func (b *backend) serve(s *hbone.Stream) {
	req := s.Request()
	b.mu.Lock()
	b.connects = append(b.connects, req)
	refuse := b.refuse[req.Target.Addr()]
	b.mu.Unlock()
	if refuse {
		_ = s.Reject(http.StatusServiceUnavailable, "connection refused")
		return
	}
	if err := s.Accept(); err != nil {
		return
	}
	if req.Target.Port() != 8080 {
		_, _ = io.Copy(s, s) // TCP echo
		_ = s.CloseWrite()
		return
	}
	br := bufio.NewReader(s)
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		reqBody, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.hosts = append(b.hosts, r.Host)
		if b.bodies == nil {
			b.bodies = map[string]string{}
		}
		b.bodies[r.Host] = string(reqBody)
		b.mu.Unlock()
		switch r.URL.Path {
		case "/fail-b": // echo-b fails
			if req.Target.Addr() == netip.MustParseAddr("198.18.2.11") {
				fmt.Fprintf(s, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
				continue
			}
		case "/slow":
			time.Sleep(300 * time.Millisecond)
		case "/chunked": // with a trailer
			fmt.Fprintf(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n")
			continue
		case "/echo":
			fmt.Fprintf(s, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(reqBody), reqBody)
			continue
		}
		body := fmt.Sprintf("%s %s host=%s", req.Target.Addr(), r.URL.Path, r.Host)
		if r.Close { // as HTTP/1.1 servers must: answer, then close
			fmt.Fprintf(s, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			_ = s.CloseWrite()
			return
		}
		fmt.Fprintf(s, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
}

type harness struct {
	wp      *Waypoint
	store   *discovery.Store
	addr    string // the waypoint's HBONE listener
	client  *hbone.Pool
	backend *backend
}

func newHarness(t testing.TB, manifests ...string) *harness {
	t.Helper()
	authority, err := ca.New(ca.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := identity.NewManager(identity.ManagerConfig{Issuer: ca.LocalIssuer{CA: authority}, TrustDomain: td, Roots: authority.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	h := &harness{backend: &backend{}}

	bsrv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerTLSConfig(mgr, td, func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return id("apps", "echo"), nil }),
		Handler:   hbone.HandlerFunc(h.backend.serve),
	})
	if err != nil {
		t.Fatal(err)
	}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go bsrv.Serve(bl)
	t.Cleanup(func() { bsrv.Close() })

	store := discovery.NewStore()
	store.Set(testModel(t, strings.Join(manifests, "---\n")))
	h.store = store
	// Every endpoint's :15008 is the one backend listener here.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, bl.Addr().String())
	}
	wl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = wl.Addr().String()
	wl.Close()
	w, err := New(Config{Name: "wp", Namespace: "apps", ListenAddr: h.addr,
		Serve: serveOff(), DataPath: testDataPath}, Deps{Store: store, Identity: mgr, Dial: dial,
		Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	h.wp = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("waypoint Run: %v", err)
		}
	})
	h.client, err = hbone.NewPool(hbone.ClientConfig{TLSConfig: func(src, dst spiffeid.ID) (*tls.Config, error) {
		return identity.ClientTLSConfig(mgr, src, dst), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.client.Close() })
	waitListening(t, h.addr)
	return h
}

func waitListening(t testing.TB, addr string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waypoint not listening on %s: %v", addr, err)
		}
	}
}

// connect opens a CONNECT to the waypoint as the client pod's ztunnel would.
func (h *harness) connect(t testing.TB, authority string) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return h.client.Dial(ctx, hbone.Request{Addr: h.addr, Authority: authority, Src: id("apps", "client"), Dst: id("apps", "wp"),
		Forwarded: netip.MustParseAddrPort("198.18.1.10:40000")})
}

// mustConnect is connect, failing the test on an error; the stream is closed at cleanup.
func (h *harness) mustConnect(t *testing.T, authority string) net.Conn {
	t.Helper()
	c, err := h.connect(t, authority)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestHTTPThroughWaypoint(t *testing.T) {
	h := newHarness(t)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	seen := map[string]bool{}
	// LEAST_REQUEST (Istio's default) picks at random between idle endpoints: 20
	// requests all on one endpoint would happen once in 500,000 runs.
	for i := range 20 {
		fmt.Fprintf(c, "GET /p%d HTTP/1.1\r\nHost: echo.apps\r\n\r\n", i)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasSuffix(string(body), fmt.Sprintf(" /p%d host=echo.apps", i)) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		seen[strings.Fields(string(body))[0]] = true
	}
	if len(seen) != 2 {
		t.Errorf("requests of one connection reached %v, want both endpoints (balanced per request)", seen)
	}
	h.backend.mu.Lock()
	defer h.backend.mu.Unlock()
	for _, r := range h.backend.connects {
		if r.Peer != id("apps", "wp") || r.Forwarded.Addr() != netip.MustParseAddr("198.18.1.10") || r.Target.Port() != 8080 {
			t.Errorf("upstream CONNECT %s peer %s forwarded %s; want the waypoint's identity, the client's address, port 8080", r.Authority, r.Peer, r.Forwarded)
		}
	}
}

func TestTCPThroughWaypoint(t *testing.T) {
	h := newHarness(t)
	c := h.mustConnect(t, "198.19.0.1:9000")
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "raw bytes, not HTTP"); err != nil {
		t.Fatal(err)
	}
	_ = c.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "raw bytes, not HTTP" {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// A live TCP stream is re-authorized when the policies change, and closed once they
// deny it.
func TestTCPStreamClosedByPolicy(t *testing.T) {
	h := newHarness(t)
	c := h.mustConnect(t, "198.19.0.1:9000")
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	echo := func(msg string) {
		t.Helper()
		buf := make([]byte, len(msg))
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q, %v", buf, err)
		}
	}
	denyPort := func(port string) *discovery.Snapshot {
		return testModel(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-port, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {ports: ["`+port+`"]}}]}]
`)
	}
	echo("hello")
	h.store.Set(denyPort("80")) // still allowed: stays open
	echo("again")
	h.store.Set(denyPort("9000"))
	if _, err := io.ReadAll(c); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the denied stream stayed open")
		}
	}
}

func TestNotBoundRefused(t *testing.T) {
	h := newHarness(t)
	for _, a := range []string{"198.19.0.2:80", "198.18.2.10:8080", "198.19.0.1:81"} {
		if c, err := h.connect(t, a); err == nil {
			c.Close()
			t.Errorf("CONNECT %s accepted; want it refused (not bound to this waypoint)", a)
		}
	}
}

func serveOff() serve.Config {
	return serve.Config{ReadinessAddr: serve.Off, MetricsAddr: serve.Off, AdminAddr: serve.Off}
}

// testLogger logs everything to the test's log; a benchmark's waypoint logs as shipped
// (info), into nothing.
func testLogger(tb testing.TB) *slog.Logger {
	if _, ok := tb.(*testing.B); ok {
		return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(tWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter sends log lines to the test's log.
type tWriter struct{ tb testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// L7 AuthorizationPolicy attached to the waypoint: 403 for what it does not allow.
func TestL7Policy(t *testing.T) {
	h := newHarness(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-api, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}]
  rules: [{from: [{source: {principals: ["cluster.local/ns/apps/sa/client"]}}], to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]}]
`)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for _, tc := range []struct {
		method, path string
		want         int
	}{{"GET", "/api/x", 200}, {"POST", "/api/x", 403}, {"GET", "/other", 403}, {"GET", "/api/y", 200}} {
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: echo.apps\r\nContent-Length: 0\r\n\r\n", tc.method, tc.path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
	// TCP to a port of the same service: the ALLOW's HTTP fields cannot match.
	if tc, err := h.connect(t, "198.19.0.1:9000"); err == nil {
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(tc, "raw")
		if got, _ := io.ReadAll(tc); len(got) > 0 {
			t.Errorf("TCP under an HTTP-only ALLOW echoed %q", got)
		}
		tc.Close()
	}
}

// HTTPRoutes on the bound Service: rules by path, a redirect, a response header, a
// request timeout answered 504, and 404 when no rule matches.
func TestHTTPRoutes(t *testing.T) {
	h := newHarness(t, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /a}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-route, value: exact-a}]}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /rewritten}}
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: Exact, value: /slow}}]
    timeouts: {request: 100ms}
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: Exact, value: /mirrored}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}}
    backendRefs: [{name: echo, port: 80}]
`)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for _, tc := range []struct {
		path      string
		code      int
		body, hdr string
		location  string
	}{
		{path: "/a", code: 200, body: " /rewritten host=echo.apps", hdr: "exact-a"},
		{path: "/./a", code: 200, body: " /rewritten host=echo.apps", hdr: "exact-a"}, // normalized once, then routed
		{path: "/old/x", code: 301, location: "http://echo.apps/new/x"},
		{path: "/slow", code: 504},
		{path: "/nothing", code: 404},
		{path: "/mirrored", code: 200, body: " /mirrored host=echo.apps"},
	} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: echo.apps\r\n\r\n", tc.path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.body != "" && !strings.HasSuffix(string(body), tc.body)) ||
			resp.Header.Get("x-route") != tc.hdr || resp.Header.Get("Location") != tc.location {
			t.Errorf("GET %s: %d %q x-route=%q location=%q; want %d %q x-route=%q location=%q", tc.path, resp.StatusCode, body,
				resp.Header.Get("x-route"), resp.Header.Get("Location"), tc.code, tc.body, tc.hdr, tc.location)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); !h.backend.sawHost("echo.apps-shadow"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the mirror backend saw no request with Host echo.apps-shadow")
		}
	}
}

// Malformed HTTP gets 400 (431 for oversized headers) and closes that connection only;
// the waypoint keeps serving.
func TestMalformedHTTP(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"bad request line", "GET\r\n\r\n", 400},
		{"space in a header name", "GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400},
		{"NUL in the path", "GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad escape", "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"lower-case method", "get /a HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"oversized headers", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431},
		{"not HTTP on an HTTP port", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 binary\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := h.connect(t, "198.19.0.1:80")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			go io.WriteString(c, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("answered %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// Still serving.
	c := h.mustConnect(t, "198.19.0.1:80")
	fmt.Fprintf(c, "GET /ok HTTP/1.1\r\nHost: echo.apps\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the malformed requests: %v %v", resp, err)
	}
}

// A body of unknown length (chunked, as gRPC's) reaches the mirror too, teed while the
// primary reads it.
func TestMirrorStreamedBody(t *testing.T) {
	h := newHarness(t, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}}
    backendRefs: [{name: echo, port: 80}]
`)
	c := h.mustConnect(t, "198.19.0.1:80")
	payload := strings.Repeat("0123456789", 10000) // more than one read
	var b strings.Builder
	for rest := payload; rest != ""; {
		n := min(len(rest), 4000)
		fmt.Fprintf(&b, "%x\r\n%s\r\n", n, rest[:n])
		rest = rest[n:]
	}
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: echo.apps\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n", b.String())
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /upload: %d", resp.StatusCode)
	}
	if got, _ := h.backend.body("echo.apps"); got != payload {
		t.Fatalf("the primary got %d bytes, want %d", len(got), len(payload))
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if got, ok := h.backend.body("echo.apps-shadow"); ok {
			if got != payload {
				t.Fatalf("the mirror got %d bytes, want %d", len(got), len(payload))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the mirror saw no request")
		}
	}
}

// The waypoint's own answers to gRPC requests are trailers-only gRPC responses with
// the status mapped as Envoy maps it; a GRPCRoute rule without a usable backend is
// UNAVAILABLE.
func TestGRPCLocalReplies(t *testing.T) {
	h := newHarness(t, `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{method: {service: pkg.Gone}}]
    backendRefs: [{name: gone, port: 80}]
  - matches: [{method: {service: pkg.Echo}}]
    backendRefs: [{name: echo, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secret, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: [/pkg.Echo/Secret]}}]}]
`)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for _, tc := range []struct {
		path       string
		grpc       bool
		code       int
		grpcStatus string
	}{
		{"/pkg.Echo/Say", true, 200, ""}, // forwarded: the backend's answer
		{"/pkg.Gone/Say", true, 200, "14"},
		{"/pkg.Other/Say", true, 200, "12"},
		{"/pkg.Echo/Secret", true, 200, "7"},
		{"/pkg.Gone/Say", false, 503, ""}, // not gRPC: a plain HTTP answer
		{"/pkg.Other/Say", false, 404, ""},
	} {
		ct := "text/plain"
		if tc.grpc {
			ct = "application/grpc"
		}
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: echo.apps\r\nContent-Type: %s\r\nContent-Length: 0\r\n\r\n", tc.path, ct)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("POST %s: %v", tc.path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || resp.Header.Get("Grpc-Status") != tc.grpcStatus {
			t.Errorf("POST %s (grpc %v): %d grpc-status %q, want %d %q", tc.path, tc.grpc, resp.StatusCode,
				resp.Header.Get("Grpc-Status"), tc.code, tc.grpcStatus)
		}
	}
}
