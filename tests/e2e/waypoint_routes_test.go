package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The waypoint's L7 side with real processes: HTTPRoutes on Service web (bound to the
// waypoint) pick web-a (echo-a only) or web-b (echo-b only); L7 AuthorizationPolicies
// attach to the waypoint's Gateway and to web; gRPC goes to Service grpc (echo-a).
// Client on node1, servers on node2, the waypoint on node3.

const (
	grpcPort   = 9090
	routesFile = "waypoint-routes.yaml"
)

var (
	webAVIP  = netip.AddrPortFrom(mesh.VIP(2), 80)
	webBVIP  = netip.AddrPortFrom(mesh.VIP(3), 80)
	grpcVIP  = netip.AddrPortFrom(mesh.VIP(4), 7070)
	grpcBVIP = netip.AddrPortFrom(mesh.VIP(6), 7070)
)

// runWaypoint declares waypoint mesh/waypoint (its Gateway, and its pod: node3's
// third), lets edit add to the model (Services to bind, labels: replace label maps,
// do not write into them), applies it and runs the waypoint; all undone at cleanup.
// It returns the waypoint's pod.
func runWaypoint(t *testing.T, edit func(*mesh.Model)) *netns.Pod {
	t.Helper()
	wpPod := m.Topo.Nodes[2].Pods[2]
	saved := *m.Model
	saved.Workloads = slices.Clone(m.Model.Workloads)
	saved.Services = slices.Clone(m.Model.Services)
	m.Model.Workloads = append(m.Model.Workloads, mesh.Workload{Name: "waypoint-0", Namespace: "mesh", ServiceAccount: waypointSA,
		Node: wpPod.Node.Name, IPs: []netip.Addr{wpPod.IP}, Labels: map[string]string{discovery.LabelGatewayName: "waypoint"}})
	if edit != nil {
		edit(m.Model)
	}
	if err := m.WritePolicies("waypoint.yaml", mesh.WaypointGateway("mesh", "waypoint")); err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		*m.Model = saved
		if err := m.Apply(); err != nil {
			t.Error(err)
		}
		if err := m.RemovePolicies("waypoint.yaml"); err != nil {
			t.Error(err)
		}
		// The next test must not meet a pod still behind the waypoint.
		for _, n := range m.Topo.Nodes[:2] {
			waitDump(t, n, "workload behind no waypoint", func(d dump) bool {
				for _, w := range d.Workloads {
					if len(w.BehindWaypoints) > 0 {
						return false
					}
				}
				return true
			})
		}
	})
	if err := m.StartWaypoint(context.Background(), wpPod, "mesh", "waypoint"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.StopWaypoint(wpPod.Name) })
	return wpPod
}

// boundService is a Service of namespace mesh with one port, bound to the waypoint.
func boundService(name string, vip netip.AddrPort, port mesh.ServicePort, selector map[string]string) mesh.Service {
	port.Port = vip.Port()
	return mesh.Service{Name: name, Namespace: "mesh", VIPs: []netip.Addr{vip.Addr()}, Ports: []mesh.ServicePort{port},
		Selector: selector, Labels: map[string]string{discovery.LabelUseWaypoint: "waypoint"}}
}

// seenRequest is what a test server saw of a request; it answers with it as JSON.
type seenRequest struct {
	Pod, Method, Path, Query, Host string
	Header                         http.Header
}

// serverLog is every request the test's HTTP servers saw.
type serverLog struct {
	mu   sync.Mutex
	reqs []seenRequest
}

func (l *serverLog) add(r seenRequest) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = append(l.reqs, r)
}

// find returns the last request to path that pod saw ("" pod: any), or nil.
func (l *serverLog) find(pod, path string) *seenRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.reqs) - 1; i >= 0; i-- {
		if r := l.reqs[i]; (pod == "" || r.Pod == pod) && r.Path == path {
			return &r
		}
	}
	return nil
}

// wait waits up to d for find(pod, path).
func (l *serverLog) wait(pod, path string, d time.Duration) *seenRequest {
	for deadline := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if r := l.find(pod, path); r != nil || time.Now().After(deadline) {
			return r
		}
	}
}

func (l *serverLog) any(match func(seenRequest) bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.reqs, match)
}

// serveL7 serves HTTP on p's webPort: every request is logged and answered with what
// the server saw, with header X-Server-Remove for a response filter to remove; /sleep
// answers after a second.
func serveL7(t *testing.T, p *netns.Pod, log *serverLog) {
	t.Helper()
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, webPort).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		s := seenRequest{Pod: p.Name, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host, Header: r.Header}
		log.add(s)
		if r.URL.Path == "/sleep" {
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return
			}
		}
		rw.Header().Set("X-Server-Remove", "1")
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(s)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// serveGRPC serves the gRPC health service on p's grpcPort.
func serveGRPC(t *testing.T, p *netns.Pod) *health.Server {
	t.Helper()
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, grpcPort).String())
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return hs
}

// answer is a response; seen is set when a test server answered.
type answer struct {
	code   int
	header http.Header
	body   string
	seen   *seenRequest
}

// send sends one HTTP/1.1 request from pod to addr on a connection of its own, with
// the request target exactly as given (no client-side cleaning) and header name,
// value pairs.
func send(from *netns.Pod, addr netip.AddrPort, method, target string, header ...string) (answer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: 0\r\n", method, target, addr.Addr())
	for i := 0; i+1 < len(header); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", header[i], header[i+1])
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		return answer{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return answer{}, err
	}
	return readAnswer(resp)
}

func readAnswer(resp *http.Response) (answer, error) {
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, header: resp.Header, body: string(body)}
	if resp.Header.Get("Content-Type") == "application/json" {
		var s seenRequest
		if json.Unmarshal(body, &s) == nil {
			a.seen = &s
		}
	}
	return a, err
}

// pod is the server that answered, or a description of the answer.
func (a answer) pod() string {
	if a.seen == nil {
		return fmt.Sprintf("no server (%d %q)", a.code, a.body)
	}
	return a.seen.Pod
}

// awaitAnswer sends the request until check accepts the answer (the waypoint reloads
// manifests within seconds), failing after a deadline.
func awaitAnswer(t *testing.T, from *netns.Pod, addr netip.AddrPort, method, target string, check func(answer) bool) answer {
	t.Helper()
	var a answer
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if a, err = send(from, addr, method, target); err == nil && check(a) {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: %d %q %v, still not the expected answer\n%s", method, target, a.code, a.body, err, m.Logs())
		}
	}
}

// applyRoutes writes HTTPRoute mesh/web on Service web's port 80 with the given rules
// (YAML list items indented by two spaces), plus a probe rule (Exact /probe redirects
// to host <version>.probe) that shows when the waypoint has this version in force.
func applyRoutes(t *testing.T, version, rules string, more ...string) {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: mesh
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, port: 80}
  rules:
  - matches: [{path: {type: Exact, value: /probe}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {hostname: %s.probe}}
%s`, version, rules)
	for _, d := range more {
		doc += "---\n" + d
	}
	if err := m.WritePolicies(routesFile, doc); err != nil {
		t.Fatal(err)
	}
	want := "http://" + version + ".probe/probe"
	awaitAnswer(t, client, webVIP, "GET", "/probe", func(a answer) bool { return a.header.Get("Location") == want })
}

// The rules of TestWaypointRoutes: matches sending to web-b, a 90/10 split, filters
// and a timeout; everything else to web-a.
const webRules = `  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: web-b, port: 80}]
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: web-b, port: 80}]
  - matches: [{queryParams: [{name: v, value: "2"}]}]
    backendRefs: [{name: web-b, port: 80}]
  - matches: [{method: POST}]
    backendRefs: [{name: web-b, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web-a, port: 80, weight: 90}, {name: web-b, port: 80, weight: 10}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: rewritten.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
    backendRefs: [{name: web-a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /here}
        statusCode: 301
  - matches: [{path: {type: Exact, value: /elsewhere}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.com}}
  - matches: [{path: {type: PathPrefix, value: /hdr}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: set}]
        add: [{name: X-Add, value: added}]
        remove: [X-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Resp, value: resp}]
        remove: [X-Server-Remove]
    backendRefs: [{name: web-a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: web-b, port: 80}}}
    backendRefs: [{name: web-a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /sleep}}]
    timeouts: {request: 200ms}
    backendRefs: [{name: web-a, port: 80}]
  - backendRefs: [{name: web-a, port: 80}]
`

// The GRPCRoute of TestWaypointRoutes: Check with header version: b to grpc-b, a
// service whose backend does not exist, everything else to grpc.
const grpcRoute = `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 7070}]
  rules:
  - matches:
    - method: {service: grpc.health.v1.Health, method: Check}
      headers: [{name: version, value: b}]
    backendRefs: [{name: grpc-b, port: 7070}]
  - matches: [{method: {service: pkg.Gone}}]
    backendRefs: [{name: gone, port: 7070}]
  - matches: [{method: {service: grpc.health.v1.Health}}]
    backendRefs: [{name: grpc, port: 7070}]
`

// HTTPRoutes, GRPCRoutes, L7 authorization and gRPC through the real waypoint.
func TestWaypointRoutes(t *testing.T) {
	requireMesh(t)
	log := &serverLog{}
	serveL7(t, echoA, log)
	serveL7(t, echoB, log)
	hs := serveGRPC(t, echoA)
	hsB := serveGRPC(t, echoB)
	hsB.SetServingStatus("b", healthpb.HealthCheckResponse_SERVING)
	httpPort := mesh.ServicePort{Name: "http", TargetPort: webPort}
	wpPod := runWaypoint(t, func(md *mesh.Model) {
		for name, version := range map[string]string{"echo-a": "a", "echo-b": "b"} {
			w := md.Workload(name)
			w.Labels = map[string]string{"app": "echo", "version": version}
		}
		md.Services = append(md.Services,
			boundService("web", webVIP, httpPort, map[string]string{"app": "echo"}),
			boundService("web-a", webAVIP, httpPort, map[string]string{"app": "echo", "version": "a"}),
			boundService("web-b", webBVIP, httpPort, map[string]string{"app": "echo", "version": "b"}),
			boundService("grpc", grpcVIP, mesh.ServicePort{Name: "grpc", TargetPort: grpcPort}, map[string]string{"version": "a"}),
			boundService("grpc-b", grpcBVIP, mesh.ServicePort{Name: "grpc", TargetPort: grpcPort}, map[string]string{"version": "b"}))
	})
	applyRoutes(t, "v1", webRules, grpcRoute)
	t.Cleanup(func() {
		if err := m.RemovePolicies(routesFile); err != nil {
			t.Error(err)
		}
	})

	t.Run("matches", func(t *testing.T) {
		for _, tc := range []struct {
			method, target string
			header         []string
			want           *netns.Pod
		}{
			{"GET", "/v2", nil, echoB},
			{"GET", "/v2/", nil, echoB},
			{"GET", "/v2/x", nil, echoB},
			{"GET", "/v2example", nil, echoA}, // a prefix matches whole path elements
			{"GET", "/v1", nil, echoA},
			{"GET", "/h", []string{"version", "two"}, echoB},
			{"GET", "/h", []string{"Version", "two"}, echoB}, // header names are case-insensitive
			{"GET", "/h", []string{"version", "one"}, echoA},
			{"GET", "/q?v=2", nil, echoB},
			{"GET", "/q?v=3", nil, echoA},
			{"GET", "/q?x=1&v=2", nil, echoB},
			{"POST", "/m", nil, echoB},
			{"PUT", "/m", nil, echoA},
			{"GET", "/m", nil, echoA},
		} {
			a, err := send(client, webVIP, tc.method, tc.target, tc.header...)
			if err != nil {
				t.Errorf("%s %s %v: %v", tc.method, tc.target, tc.header, err)
				continue
			}
			if a.code != 200 || a.pod() != tc.want.Name {
				t.Errorf("%s %s %v: %d from %s, want 200 from %s", tc.method, tc.target, tc.header, a.code, a.pod(), tc.want.Name)
			}
		}
		// Routes attach to the Service addressed (web-a has none), never to a Host header.
		if a, err := send(client, webAVIP, "GET", "/v2"); err != nil || a.pod() != echoA.Name {
			t.Errorf("GET web-a/v2: %s %v, want %s: web's route applied to web-a", a.pod(), err, echoA.Name)
		}
	})

	t.Run("split", func(t *testing.T) {
		const conns, perConn = 4, 250
		counts := map[string]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, conns)
		start := time.Now()
		for range conns {
			wg.Go(func() {
				hc := keepAlive(client)
				defer hc.CloseIdleConnections()
				for range perConn {
					resp, err := hc.Get("http://" + webVIP.String() + "/split")
					if err != nil {
						errs <- err
						return
					}
					a, err := readAnswer(resp)
					if err != nil || a.seen == nil {
						errs <- fmt.Errorf("GET /split: %d %q %v", a.code, a.body, err)
						return
					}
					mu.Lock()
					counts[a.seen.Pod]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		n := conns * perConn
		shareA := 100 * float64(counts[echoA.Name]) / float64(n)
		t.Logf("90/10 split over %d requests on %d keep-alive connections in %v: web-a %d (%.1f%%), web-b %d (%.1f%%)",
			n, conns, time.Since(start).Round(time.Millisecond), counts[echoA.Name], shareA, counts[echoB.Name], 100-shareA)
		if counts[echoA.Name]+counts[echoB.Name] != n || shareA < 85 || shareA > 95 {
			t.Errorf("split %v, want web-a 90%% ± 5 points", counts)
		}
	})

	t.Run("rewrite", func(t *testing.T) {
		a, err := send(client, webVIP, "GET", "/old/x?q=1")
		if err != nil {
			t.Fatal(err)
		}
		if a.code != 200 || a.seen == nil || a.seen.Path != "/new/x" || a.seen.Query != "q=1" || a.seen.Host != "rewritten.example" {
			t.Errorf("GET /old/x?q=1: %d, the server saw %+v, want path /new/x, query q=1, host rewritten.example", a.code, a.seen)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		for _, tc := range []struct {
			target, location string
			code             int
		}{
			{"/moved/x?q=1", "http://" + webVIP.Addr().String() + "/here/x?q=1", 301},
			{"/elsewhere", "https://example.com/elsewhere", 302},
		} {
			a, err := send(client, webVIP, "GET", tc.target)
			if err != nil {
				t.Fatal(err)
			}
			if a.code != tc.code || a.header.Get("Location") != tc.location {
				t.Errorf("GET %s: %d Location %q, want %d %q", tc.target, a.code, a.header.Get("Location"), tc.code, tc.location)
			}
		}
		if log.any(func(r seenRequest) bool { return r.Path == "/moved/x" || r.Path == "/here/x" || r.Path == "/elsewhere" }) {
			t.Error("a redirected request reached a server")
		}
	})

	t.Run("header modifiers", func(t *testing.T) {
		a, err := send(client, webVIP, "GET", "/hdr", "X-Set", "old", "X-Add", "mine", "X-Remove", "gone")
		if err != nil {
			t.Fatal(err)
		}
		if a.code != 200 || a.seen == nil {
			t.Fatalf("GET /hdr: %d %q", a.code, a.body)
		}
		h := a.seen.Header
		if !slices.Equal(h.Values("X-Set"), []string{"set"}) || !slices.Equal(h.Values("X-Add"), []string{"mine", "added"}) || h.Get("X-Remove") != "" {
			t.Errorf("the server saw X-Set %q, X-Add %q, X-Remove %q; want [set], [mine added], none",
				h.Values("X-Set"), h.Values("X-Add"), h.Values("X-Remove"))
		}
		if a.header.Get("X-Resp") != "resp" || a.header.Get("X-Server-Remove") != "" {
			t.Errorf("response headers %v, want X-Resp: resp and no X-Server-Remove", a.header)
		}
	})

	t.Run("mirror", func(t *testing.T) {
		a, err := send(client, webVIP, "GET", "/mirror/1")
		if err != nil {
			t.Fatal(err)
		}
		if a.code != 200 || a.pod() != echoA.Name {
			t.Fatalf("GET /mirror/1: %d from %s, want the primary's (%s) answer", a.code, a.pod(), echoA.Name)
		}
		if log.wait(echoB.Name, "/mirror/1", 3*time.Second) == nil {
			t.Fatal("the mirror backend web-b saw no copy of the request")
		}
	})

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		a, err := send(client, webVIP, "GET", "/sleep")
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); a.code != 504 || d > 900*time.Millisecond {
			t.Errorf("GET /sleep with a 200ms request timeout against a 1s server: %d after %v, want 504 within the timeout", a.code, d)
		}
		if err := mesh.WaitOutput(m.Waypoint(wpPod.Name), "msg=request", "path=/sleep", "response_code=504", "response_flags=UT"); err != nil {
			t.Error(err)
		}
	})

	t.Run("grpc", func(t *testing.T) {
		hs.SetServingStatus("echo", healthpb.HealthCheckResponse_SERVING)
		cc, err := grpc.NewClient("passthrough:///"+grpcVIP.String(),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return client.DialContext(ctx, "tcp", addr)
			}),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "echo"})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("unary Check through the waypoint: %v %v\n%s", resp, err, m.Logs())
		}
		// A status in the trailers only.
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
			t.Errorf("Check of an unknown service: %v, want NotFound", err)
		}
		sctx, scancel := context.WithCancel(ctx)
		stream, err := hc.Watch(sctx, &healthpb.HealthCheckRequest{Service: "echo"})
		if err != nil {
			t.Fatal(err)
		}
		want := []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING}
		for i, w := range want {
			msg, err := stream.Recv()
			if err != nil || msg.GetStatus() != w {
				t.Fatalf("Watch message %d: %v %v, want %v", i, msg, err, w)
			}
			hs.SetServingStatus("echo", healthpb.HealthCheckResponse_NOT_SERVING)
		}
		scancel()

		// GRPCRoute: a method and header match picks grpc-b (the only one serving "b").
		bctx := metadata.AppendToOutgoingContext(ctx, "version", "b")
		if resp, err := hc.Check(bctx, &healthpb.HealthCheckRequest{Service: "b"}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check b with version: b: %v %v, want SERVING from grpc-b", resp, err)
		}
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "b"}); status.Code(err) != codes.NotFound {
			t.Errorf("Check b without the header: %v, want NotFound from grpc", err)
		}
		// The waypoint's own answers are gRPC statuses: a backend that does not exist
		// is UNAVAILABLE, a method no rule matches UNIMPLEMENTED.
		var out healthpb.HealthCheckResponse
		if err := cc.Invoke(ctx, "/pkg.Gone/Get", &healthpb.HealthCheckRequest{}, &out); status.Code(err) != codes.Unavailable {
			t.Errorf("a rule whose backend does not exist: %v, want Unavailable", err)
		}
		if err := cc.Invoke(ctx, "/pkg.Other/Get", &healthpb.HealthCheckRequest{}, &out); status.Code(err) != codes.Unimplemented {
			t.Errorf("no matching rule: %v, want Unimplemented", err)
		}
		wp := m.Waypoint(wpPod.Name)
		for _, path := range []string{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"} {
			if err := mesh.WaitOutput(wp, "msg=request", "authority="+grpcVIP.String(), "path="+path); err != nil {
				t.Error(err)
			}
		}
	})

	// A percent-encoded character reaches the server as sent, not encoded twice.
	t.Run("escaped path forwarded once", func(t *testing.T) {
		a, err := send(client, webVIP, "GET", "/enc/a%20b%C3%A9")
		if err != nil {
			t.Fatal(err)
		}
		if a.code != 200 || a.seen == nil {
			t.Fatalf("GET /enc/a%%20b%%C3%%A9: %d %q", a.code, a.body)
		}
		if a.seen.Path != "/enc/a b\u00e9" {
			t.Fatalf("GET /enc/a%%20b%%C3%%A9 reached the server as path %q, want %q (escaped once)", a.seen.Path, "/enc/a b\u00e9")
		}
	})

	// Last: a policy stays in force at the waypoint for a while after its file is gone.
	t.Run("authorization", func(t *testing.T) {
		testWaypointAuthz(t, log)
	})
}

// L7 AuthorizationPolicy at the waypoint: an ALLOW attached to its Gateway (only GET
// /api/* from the client) and a DENY attached to Service web (/api/secret*), which
// wins; path tricks are normalized before the decision.
func testWaypointAuthz(t *testing.T, log *serverLog) {
	// A connection opened before the policies, for the revocation check below.
	early := keepAlive(client)
	defer early.CloseIdleConnections()
	if code, body, err := getWith(early, webVIP, "/admin"); err != nil || code != 200 {
		t.Fatalf("GET /admin before any policy: %d %q %v", code, body, err)
	}

	m.ApplyPolicies(t, "waypoint-authz.yaml", authz("wp-allow-api", `spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/mesh/sa/client"]}
    to:
    - operation: {methods: [GET], paths: ["/api/*"]}`)+authz("web-deny-secret", `spec:
  targetRefs:
  - {kind: Service, group: "", name: web}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/api/secret*"]}`), "mesh/wp-allow-api", "mesh/web-deny-secret")
	awaitAnswer(t, client, webVIP, "GET", "/admin", func(a answer) bool { return a.code == 403 })
	awaitAnswer(t, client, webVIP, "GET", "/api/secret", func(a answer) bool { return a.code == 403 })

	for _, tc := range []struct {
		from           *netns.Pod
		method, target string
		code           int
		path           string // what the server sees when allowed
	}{
		{client, "GET", "/api/x", 200, "/api/x"},
		{client, "GET", "/api/y/../x", 200, "/api/x"}, // normalized once: authorized and forwarded alike
		{client, "POST", "/api/x", 403, ""},
		{client, "GET", "/admin", 403, ""},
		{local, "GET", "/api/x", 403, ""}, // another principal
		{client, "GET", "/api/secret", 403, ""},
		{client, "GET", "/api/secret/file", 403, ""},
		{client, "GET", "/api/x/../secret", 403, ""},
		{client, "GET", "/api/./secret", 403, ""},
		{client, "GET", "//api/secret", 403, ""},
		{client, "GET", "/api//secret", 403, ""},
		{client, "GET", "/api/%73ecret", 403, ""},
		{client, "GET", "/api/%2e%2e/api/secret", 403, ""},
		{client, "GET", "/api/secret#x", 403, ""},
		{client, "GET", `/api\secret`, 403, ""},
	} {
		a, err := send(tc.from, webVIP, tc.method, tc.target)
		if err != nil {
			t.Errorf("%s %s from %s: %v", tc.method, tc.target, tc.from.Name, err)
			continue
		}
		if a.code != tc.code {
			t.Errorf("%s %s from %s: %d %q, want %d", tc.method, tc.target, tc.from.Name, a.code, a.body, tc.code)
		}
		if tc.code == 200 && (a.seen == nil || a.seen.Path != tc.path) {
			t.Errorf("%s %s: the server saw %+v, want path %s", tc.method, tc.target, a.seen, tc.path)
		}
	}
	if log.any(func(r seenRequest) bool { return strings.Contains(strings.ToLower(r.Path), "secret") }) {
		t.Error("a request for /api/secret reached a server")
	}
	if err := mesh.WaitOutput(m.Waypoint(m.Topo.Nodes[2].Pods[2].Name), "msg=request", "path=/api/secret", "response_code=403", "policy="); err != nil {
		t.Error(err)
	}

	// Envoy's (and Istio's BASE) normalization turns '\' into '/', as NormalizePath
	// says it does.
	t.Run("backslash is a separator", func(t *testing.T) {
		a, err := send(client, webVIP, "GET", `/api\x`)
		if err != nil {
			t.Fatal(err)
		}
		if a.code != 200 || a.seen == nil || a.seen.Path != "/api/x" {
			t.Fatalf("GET /api\\x answered %d (the server saw %+v), want 200 with path /api/x ('\\' is a separator)", a.code, a.seen)
		}
	})

	// The policies apply to requests of a connection opened before them.
	t.Run("revocation on a keep-alive connection", func(t *testing.T) {
		code, body, err := getWith(early, webVIP, "/admin")
		if err != nil {
			t.Fatal(err)
		}
		if code != 403 {
			t.Fatalf("GET /admin on a connection opened before the ALLOW policy answered %d %q, want 403 (policies in force now)", code, body)
		}
	})
}
