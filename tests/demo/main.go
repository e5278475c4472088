// Command demo is `make demo`: two nodes with pods in network namespaces, the built-in
// CA and a ztunnel per node, traffic between the pods, and tcpdump proof that the wire
// between the nodes carries only TLS, then a policy, a waypoint and its outlier detection.
// Everything is torn down at the end.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

func main() {
	netns.EnterPrivateAsRoot("demo", "network namespaces, eBPF, tcpdump", "sudo make demo")
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const echoPort = 8080

func run() error {
	bin := flag.String("bin", "", "directory with ztunnel and ambit-ca (built if empty)")
	flag.Parse()
	if *bin != "" {
		abs, err := filepath.Abs(*bin)
		if err != nil {
			return err
		}
		*bin = abs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	step("building two nodes with two pods each, the built-in CA and a ztunnel per node")
	var client, server, other *netns.Pod
	m, err := mesh.Start(ctx, mesh.Options{
		Nodes: 2, PodsPerNode: 2, BinDir: *bin,
		Model: func(t *netns.Topology) *mesh.Model {
			md := mesh.DefaultModel(t)
			client, other, server = t.Nodes[0].Pods[0], t.Nodes[0].Pods[1], t.Nodes[1].Pods[0]
			md.Services = []mesh.Service{{Name: "echo", Namespace: "mesh", VIPs: []netip.Addr{mesh.VIP(0)},
				Ports: []mesh.ServicePort{{Port: 80, TargetPort: echoPort}}, Selector: map[string]string{"app": server.Name}}}
			return md
		},
	})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing everything down")
		if err := m.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "teardown:", err)
		}
	}()
	for _, n := range m.Topo.Nodes {
		fmt.Printf("  %s  underlay %s  pods:", n.Name, n.IP)
		for _, p := range n.Pods {
			fmt.Printf(" %s=%s", p.Name, p.IP)
		}
		fmt.Println()
	}
	fmt.Printf("  service echo.mesh.svc.cluster.local  VIP %s:80 -> %s:%d\n", mesh.VIP(0), server.IP, echoPort)

	echo, err := server.StartEcho(fmt.Sprintf("%s:%d", server.IP, echoPort))
	if err != nil {
		return err
	}
	defer echo.Close()
	local, err := other.StartEcho(fmt.Sprintf("%s:%d", other.IP, echoPort))
	if err != nil {
		return err
	}
	defer local.Close()

	step("capturing the wire between the nodes with tcpdump")
	pcapFile := filepath.Join(m.Dir, "underlay.pcap")
	capture, err := m.Topo.Underlay.Tcpdump(ctx, "br0", pcapFile, "tcp")
	if err != nil {
		return err
	}
	marker := []byte("AMBIT-DEMO-SECRET-MARKER")

	step("sending traffic")
	for _, tc := range []struct {
		what string
		to   netip.AddrPort
		size int
	}{
		{"pod IP, across nodes", netip.AddrPortFrom(server.IP, echoPort), 0},
		{"service VIP, across nodes", netip.AddrPortFrom(mesh.VIP(0), 80), 0},
		{"pod IP, same node", netip.AddrPortFrom(other.IP, echoPort), 0},
		{"10 MiB across nodes", netip.AddrPortFrom(server.IP, echoPort), 10 << 20},
	} {
		start := time.Now()
		n, err := exchange(ctx, client, tc.to, marker, tc.size)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.what, err)
		}
		fmt.Printf("  %-28s %s -> %-20s %8d bytes echoed intact in %s\n", tc.what, client.IP, tc.to, n, time.Since(start).Round(time.Millisecond))
	}
	peers := echo.Peers()
	fmt.Printf("  the server pod saw the connection coming from %s (the client pod's own address)\n", peers[len(peers)-1].Addr())
	time.Sleep(200 * time.Millisecond)
	if err := capture.Stop(); err != nil {
		return err
	}

	step("what ztunnel did")
	for _, n := range m.Topo.Nodes {
		d, err := m.Dump(ctx, n)
		if err != nil {
			return err
		}
		fmt.Printf("  %s (ready: %s)\n", n.Name, d.Ready)
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		for _, c := range d.Certificates {
			fmt.Fprintf(tw, "    certificate\t%s\texpires %s\n", c.ID, c.NotAfter.Format(time.RFC3339))
		}
		tw.Flush()
	}
	for _, n := range m.Topo.Nodes {
		p := m.Ztunnel(n.Name)
		if p == nil {
			continue
		}
		fmt.Printf("  %s access log:\n", n.Name)
		for _, line := range strings.Split(p.Output(), "\n") {
			if strings.Contains(line, "connection closed") {
				fmt.Printf("    %s\n", trimLog(line))
			}
		}
	}

	step("tcpdump verdict on the wire between the nodes")
	v, err := pcap.VerifyWire(pcapFile, marker)
	if err != nil {
		return err
	}
	fmt.Printf("  %s\n", v)
	if !v.Encrypted() {
		return fmt.Errorf("the wire is NOT proven encrypted")
	}
	fmt.Println("  VERDICT: node-to-node traffic is HBONE (mTLS 1.3 on :15008) only; the marker never appeared in clear")
	if err := demoPolicy(ctx, m, client, other, server); err != nil {
		return err
	}
	wpPod := m.Topo.Nodes[1].Pods[1]
	if err := demoWaypoint(ctx, m, client, server, wpPod); err != nil {
		return err
	}
	return demoOutlier(ctx, m, client, server, other, wpPod)
}

// outlierRule ejects an endpoint of web after two 5xx answers in a row.
const outlierRule = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: mesh}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}
    outlierDetection: {consecutive5xxErrors: 2, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 100}
`

// demoOutlier gives web a second endpoint that answers every request 503 and shows the
// waypoint ejecting it after two errors.
func demoOutlier(ctx context.Context, m *mesh.Mesh, client, good, bad, wpPod *netns.Pod) error {
	const webPort = 8081
	step(fmt.Sprintf("resilience: %s joins web answering 503; a DestinationRule turns on outlier detection", bad.Name))
	for _, p := range []*netns.Pod{good, bad} {
		l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, webPort).String())
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if p == bad {
				http.Error(rw, "broken "+bad.Name, http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(rw, "hello from %s", p.Name)
		})}
		go srv.Serve(l)
		defer srv.Close()
	}
	for _, line := range strings.Split(strings.TrimSpace(outlierRule), "\n") {
		fmt.Printf("    %s\n", line)
	}
	if err := m.WritePolicies("outlier.yaml", outlierRule, "mesh/web-get-only"); err != nil { // the waypoint step's policy stays
		return err
	}
	for i := range m.Model.Workloads {
		if w := &m.Model.Workloads[i]; w.Name == bad.Name {
			w.Labels = map[string]string{"app": m.Model.Service("mesh", "web").Selector["app"]}
		}
	}
	if err := m.Apply(); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: client.DialContext}}
	web := "http://" + netip.AddrPortFrom(mesh.VIP(1), 80).String() + "/hello"
	get := func() (int, error) {
		resp, err := hc.Get(web)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// Wait until both endpoints take requests.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if code, err := get(); err == nil && code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never answered through the waypoint", bad.Name)
		}
	}
	var codes []string
	for range 12 {
		code, err := get()
		if err != nil {
			return err
		}
		codes = append(codes, fmt.Sprint(code))
	}
	fmt.Printf("  12 requests to web: %s\n", strings.Join(codes, " "))
	time.Sleep(100 * time.Millisecond)
	for _, line := range strings.Split(m.Waypoint(wpPod.Name).Output(), "\n") {
		if strings.Contains(line, "endpoint ejected") {
			fmt.Printf("  waypoint: %s\n", trimLog(line))
			break
		}
	}
	fmt.Println("  (two 503s in a row and the broken endpoint is out: the rest are 200, for a minute)")
	return nil
}

// waypointManifests declare the waypoint, route service web through it (a redirect for
// /old/, everything else to web's pods) and let it admit GET only.
var waypointManifests = mesh.WaypointGateway("mesh", "waypoint") + `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-get-only, namespace: mesh}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
`

// demoWaypoint puts service web behind a waypoint running in wpPod and shows a route,
// a redirect and an L7 denial, with the server still seeing the client's address.
func demoWaypoint(ctx context.Context, m *mesh.Mesh, client, server, wpPod *netns.Pod) error {
	const webPort = 8081
	step(fmt.Sprintf("a waypoint for service web (HTTPRoute, L7 AuthorizationPolicy), running in %s", wpPod.Name))
	if err := m.RemovePolicies("demo.yaml"); err != nil {
		return err
	}
	l, err := server.Listen("tcp", netip.AddrPortFrom(server.IP, webPort).String())
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello from %s: %s %s, client %s", server.Name, r.Method, r.URL.Path, r.RemoteAddr)
	})}
	go srv.Serve(l)
	defer srv.Close()
	for i := range m.Model.Workloads {
		if w := &m.Model.Workloads[i]; w.Name == wpPod.Name {
			w.ServiceAccount, w.Labels = "waypoint", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"}
		}
	}
	web := netip.AddrPortFrom(mesh.VIP(1), 80)
	m.Model.Services = append(m.Model.Services, mesh.Service{Name: "web", Namespace: "mesh", VIPs: []netip.Addr{web.Addr()},
		Ports: []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: webPort}}, Selector: map[string]string{"app": server.Name},
		Labels: map[string]string{"istio.io/use-waypoint": "waypoint"}})
	for _, line := range strings.Split(strings.TrimSpace(waypointManifests), "\n") {
		fmt.Printf("    %s\n", line)
	}
	if err := m.WritePolicies("waypoint.yaml", waypointManifests); err != nil {
		return err
	}
	if err := m.Apply(); err != nil {
		return err
	}
	if err := m.StartWaypoint(ctx, wpPod, "mesh", "waypoint"); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: client.DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	send := func(method, path string) (*http.Response, string, error) {
		req, _ := http.NewRequestWithContext(ctx, method, "http://"+web.String()+path, nil)
		req.Host = "web.mesh"
		resp, err := hc.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, string(b), err
	}
	// The ztunnels and the waypoint reload the manifests within seconds.
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, _, err := send("GET", "/hello")
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET through the waypoint: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, tc := range []struct{ method, path, what string }{
		{"GET", "/hello", "routed to web's pod"},
		{"GET", "/old/page", "HTTPRoute redirect"},
		{"DELETE", "/hello", "L7 AuthorizationPolicy: GET only"},
	} {
		resp, body, err := send(tc.method, tc.path)
		if err != nil {
			return fmt.Errorf("%s %s: %w", tc.method, tc.path, err)
		}
		detail := strings.TrimSpace(body)
		if loc := resp.Header.Get("Location"); loc != "" {
			detail = "Location: " + loc
		}
		fmt.Printf("  %-6s %-10s -> %d  %-34s %s\n", tc.method, tc.path, resp.StatusCode, tc.what, detail)
	}
	fmt.Printf("  (%s is %s: the server saw the client's own address through the waypoint)\n", client.Name, client.IP)
	time.Sleep(100 * time.Millisecond)
	fmt.Println("  waypoint access log:")
	for _, line := range strings.Split(m.Waypoint(wpPod.Name).Output(), "\n") {
		if strings.Contains(line, "msg=request") {
			fmt.Printf("    %s\n", trimLog(line))
		}
	}
	return nil
}

// demoPolicy applies an ALLOW policy to the server, which then refuses every caller it
// does not name, and shows both sides.
func demoPolicy(ctx context.Context, m *mesh.Mesh, client, other, server *netns.Pod) error {
	principal := fmt.Sprintf("%s/ns/mesh/sa/%s", mesh.TrustDomain, client.Name)
	step(fmt.Sprintf("AuthorizationPolicy: only %s may call %s", principal, server.Name))
	manifests := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-%[1]s, namespace: mesh}
spec:
  selector:
    matchLabels: {app: %[2]s}
  rules:
  - from:
    - source:
        principals: [%[3]q]
`, client.Name, server.Name, principal)
	for _, line := range strings.Split(strings.TrimSpace(manifests), "\n") {
		fmt.Printf("    %s\n", line)
	}
	if err := m.WritePolicies("demo.yaml", manifests, "mesh/allow-"+client.Name); err != nil {
		return err
	}
	to := netip.AddrPortFrom(server.IP, echoPort)
	marker := []byte("policy demo")
	if _, err := exchange(ctx, client, to, marker, 0); err != nil {
		return fmt.Errorf("%s, allowed by the policy: %w", client.Name, err)
	}
	fmt.Printf("  %-8s -> %s  allowed\n", client.Name, to)
	if n, err := exchange(ctx, other, to, marker, 0); err == nil && n > 0 {
		return fmt.Errorf("%s reached %s although no policy allows it", other.Name, server.Name)
	}
	fmt.Printf("  %-8s -> %s  refused (HBONE 401 from %s's ztunnel)\n", other.Name, to, server.Node.Name)
	time.Sleep(100 * time.Millisecond) // the log line is written asynchronously
	for _, line := range strings.Split(m.Ztunnel(server.Node.Name).Output(), "\n") {
		if strings.Contains(line, "connection refused") && strings.Contains(line, "denied by policy") {
			fmt.Printf("    %s\n", trimLog(line))
		}
	}
	return nil
}

func trimLog(line string) string {
	if i := strings.Index(line, "msg="); i >= 0 {
		return line[i:]
	}
	return line
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

// exchange sends the marker (and size random bytes) and checks the echo.
func exchange(ctx context.Context, from *netns.Pod, to netip.AddrPort, marker []byte, size int) (int, error) {
	c, err := from.Dial(ctx, "tcp", to.String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	payload := append([]byte{}, marker...)
	if size > 0 {
		extra := make([]byte, size)
		_, _ = rand.Read(extra)
		payload = append(payload, extra...)
	}
	go func() {
		_, _ = c.Write(payload)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return len(got), err
	}
	if !bytes.Equal(got, payload) {
		return len(got), fmt.Errorf("echo mismatch: sent sha256 %x, got %x", sha256.Sum256(payload), sha256.Sum256(got))
	}
	return len(got), nil
}
