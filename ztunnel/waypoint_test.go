package ztunnel

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
)

// Identities of waypointSnapshot's waypoint pods.
var (
	idWP  = spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/wp")
	idWPW = spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/wpw")
)

// waypointSnapshot is a mesh with waypoints: service echo (echo-a, echo-b on node2)
// bound to the service waypoint mesh/wp (pod wp-1 on node3); pod solo (node2) bound to
// the workload waypoint mesh/wpw (pod wpw-1, on node2 too); service lost bound to a
// waypoint that is not declared; service v6 to mesh/wp6, whose only pod has no IPv4
// address; service free and its pod free-a bound to nothing.
func waypointSnapshot(tb testing.TB) *discovery.Snapshot {
	tb.Helper()
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	ip := netip.MustParseAddr
	ips := func(s ...string) []netip.Addr {
		out := make([]netip.Addr, len(s))
		for i, a := range s {
			out[i] = ip(a)
		}
		return out
	}
	gw := func(name string) map[string]string { return map[string]string{discovery.LabelGatewayName: name} }
	use := func(name string) map[string]string { return map[string]string{discovery.LabelUseWaypoint: name} }
	app := func(name string) map[string]string { return map[string]string{"app": name} }
	port := []discovery.ServicePort{{Port: 80, TargetPort: 8080}}
	snap, err := discovery.Build(discovery.Input{
		Namespaces: []*discovery.Namespace{{Name: "mesh", Labels: ambient}, {Name: "plain"}},
		Nodes: []*discovery.Node{
			{Name: "node1", Addresses: ips("198.18.0.1")},
			{Name: "node2", Addresses: ips("198.18.0.2")},
			{Name: "node3", Addresses: ips("198.18.0.3")},
		},
		Waypoints: []*discovery.Waypoint{
			{Name: "wp", Namespace: "mesh"},
			{Name: "wpw", Namespace: "mesh", For: discovery.WaypointForWorkload},
			{Name: "wp6", Namespace: "mesh"},
		},
		Workloads: []*discovery.Workload{
			{Name: "client", Namespace: "mesh", ServiceAccount: "client", Node: "node1", IPs: ips("198.18.1.10")},
			{Name: "client-2", Namespace: "mesh", ServiceAccount: "client", Node: "node2", IPs: ips("198.18.2.20")},
			{Name: "echo-a", Namespace: "mesh", ServiceAccount: "echo", Node: "node2", IPs: ips("198.18.2.10"), Labels: app("echo")},
			{Name: "echo-b", Namespace: "mesh", ServiceAccount: "echo", Node: "node2", IPs: ips("198.18.2.11"), Labels: app("echo")},
			{Name: "solo", Namespace: "mesh", ServiceAccount: "solo", Node: "node2", IPs: ips("198.18.2.13"), Labels: use("wpw")},
			{Name: "lost-a", Namespace: "mesh", ServiceAccount: "lost", Node: "node2", IPs: ips("198.18.2.14"), Labels: app("lost")},
			{Name: "free-a", Namespace: "mesh", ServiceAccount: "free", Node: "node2", IPs: ips("198.18.2.15"), Labels: app("free")},
			{Name: "plain", Namespace: "plain", Node: "node2", IPs: ips("198.18.2.12")},
			{Name: "wp-1", Namespace: "mesh", ServiceAccount: "wp", Node: "node3", IPs: ips("2001:db8::30", "198.18.3.10"), Labels: gw("wp")},
			{Name: "wpw-1", Namespace: "mesh", ServiceAccount: "wpw", Node: "node2", IPs: ips("198.18.2.30"), Labels: gw("wpw")},
			{Name: "wp6-1", Namespace: "mesh", ServiceAccount: "wp6", Node: "node3", IPs: ips("2001:db8::31"), Labels: gw("wp6")},
		},
		Services: []*discovery.Service{
			{Name: "echo", Namespace: "mesh", VIPs: ips("198.19.0.10"), Ports: port, Selector: app("echo"), Labels: use("wp")},
			{Name: "free", Namespace: "mesh", VIPs: ips("198.19.0.11"), Ports: port, Selector: app("free")},
			{Name: "lost", Namespace: "mesh", VIPs: ips("198.19.0.12"), Ports: port, Selector: app("lost"), Labels: use("gone")},
			{Name: "v6", Namespace: "mesh", VIPs: ips("198.19.0.13"), Ports: port, Selector: app("nothing"), Labels: use("wp6")},
		},
	}, discovery.EnrollmentOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return snap
}

// TestRouteWaypoint: the decision for destinations bound to a waypoint, at the source
// (to the waypoint, or refused) and at the destination (only from the waypoint).
func TestRouteWaypoint(t *testing.T) {
	idSolo := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/solo")
	idFree := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/free")
	idLost := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/lost")
	echoBehind := "destination mesh/echo-a is behind waypoint mesh/wp: only the waypoint may connect"
	tests := []struct {
		name   string
		node   string
		bypass bool // AllowWaypointBypass
		a      arrival
	}{
		{"service VIP to the service's waypoint", "node1", false, arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.19.0.10:80",
			want:     decision{action: actHBONE, target: ap("198.19.0.10:80"), peer: ap("198.18.3.10:15008")},
			wantSrcW: "mesh/client", wantDstW: "mesh/wp-1", wantSrcID: idClient, wantDstID: idWP, wantMTLS: true,
			wantSvc: "echo.mesh.svc.cluster.local", wantHBONE: "198.18.3.10:15008", wantWaypoint: "mesh/wp",
		}},
		{"pod IP of a workload-bound pod to its waypoint, on this very node", "node2", false, arrival{
			dir: dirOutbound, src: "198.18.2.20:40000", dst: "198.18.2.13:8080",
			want:     decision{action: actHBONE, target: ap("198.18.2.13:8080"), peer: ap("198.18.2.30:15008")},
			wantSrcW: "mesh/client-2", wantDstW: "mesh/wpw-1", wantSrcID: idClient, wantDstID: idWPW, wantMTLS: true,
			wantHBONE: "198.18.2.30:15008", wantWaypoint: "mesh/wpw",
		}},
		{"pod IP of a service-bound pod goes direct, as in Istio", "node1", false, arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.18.2.10:8080",
			want:     decision{action: actHBONE, target: ap("198.18.2.10:8080"), peer: ap("198.18.2.10:15008")},
			wantSrcW: "mesh/client", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho, wantMTLS: true,
			wantHBONE: "198.18.2.10:15008",
		}},
		{"waypoint not declared", "node1", false, arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.19.0.12:80", wantErr: errWaypointUndeclared,
			wantReason: "waypoint mesh/gone is not declared",
			wantSrcW:   "mesh/client", wantSrcID: idClient, wantSvc: "lost.mesh.svc.cluster.local", wantWaypoint: "mesh/gone",
		}},
		{"waypoint without a pod to take it", "node1", false, arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.19.0.13:80", wantErr: errWaypointNoPod,
			wantReason: "waypoint mesh/wp6 has no ready pod",
			wantSrcW:   "mesh/client", wantSrcID: idClient, wantSvc: "v6.mesh.svc.cluster.local", wantWaypoint: "mesh/wp6",
		}},
		{"the check off still sends to the waypoint", "node1", true, arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.19.0.10:80",
			want:     decision{action: actHBONE, target: ap("198.19.0.10:80"), peer: ap("198.18.3.10:15008")},
			wantSrcW: "mesh/client", wantDstW: "mesh/wp-1", wantSrcID: idClient, wantDstID: idWP, wantMTLS: true,
			wantSvc: "echo.mesh.svc.cluster.local", wantHBONE: "198.18.3.10:15008", wantWaypoint: "mesh/wp",
		}},

		{"inbound HBONE from another identity", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.10:8080", peer: idClient,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.1.10:40000",
			wantErr: errBehindWaypoint, wantStatus: http.StatusUnauthorized, wantReason: echoBehind,
			wantSrc: "198.18.0.1:50000", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"inbound HBONE from the waypoint pod: its client's address trusted", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.3.10:50000", dst: "198.18.2.10:8080", peer: idWP,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.1.10:40000",
			want:    deliver("198.18.2.10:8080", "198.18.1.10"),
			wantSrc: "198.18.1.10:40000", wantSrcW: "mesh/client", wantDstW: "mesh/echo-a", wantSrcID: idWP, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008", wantWaypoint: "mesh/wp",
		}},
		{"inbound HBONE from the waypoint pod for a client outside the mesh", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.3.10:50000", dst: "198.18.2.10:8080", peer: idWP,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.9.9:1234",
			want:    deliver("198.18.2.10:8080", "198.18.9.9"),
			wantSrc: "198.18.9.9:1234", wantDstW: "mesh/echo-a", wantSrcID: idWP, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008", wantWaypoint: "mesh/wp",
		}},
		{"inbound HBONE with the waypoint's identity from another address", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.1.10:50000", dst: "198.18.2.10:8080", peer: idWP,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.1.10:40000",
			wantErr: errBehindWaypoint, wantStatus: http.StatusUnauthorized, wantReason: echoBehind,
			wantSrc: "198.18.1.10:50000", wantDstW: "mesh/echo-a", wantSrcID: idWP, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"inbound HBONE from another waypoint's pod", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.2.30:50000", dst: "198.18.2.10:8080", peer: idWPW,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.1.10:40000",
			wantErr: errBehindWaypoint, wantStatus: http.StatusUnauthorized, wantReason: echoBehind,
			wantSrc: "198.18.2.30:50000", wantDstW: "mesh/echo-a", wantSrcID: idWPW, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"inbound HBONE to a workload-bound pod from its waypoint", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.2.30:50000", dst: "198.18.2.13:8080", peer: idWPW,
			tunnelDst: "198.18.2.13:15008", forwarded: "198.18.2.20:40000",
			want:    deliver("198.18.2.13:8080", "198.18.2.20"),
			wantSrc: "198.18.2.20:40000", wantSrcW: "mesh/client-2", wantDstW: "mesh/solo", wantSrcID: idWPW, wantDstID: idSolo,
			wantMTLS: true, wantHBONE: "198.18.2.13:15008", wantWaypoint: "mesh/wpw",
		}},
		{"inbound HBONE to a pod whose waypoint is not declared", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.14:8080", peer: idClient,
			tunnelDst: "198.18.2.14:15008", wantErr: errBehindWaypoint, wantStatus: http.StatusUnauthorized,
			wantReason: "destination mesh/lost-a is behind waypoint mesh/gone: only the waypoint may connect",
			wantDstW:   "mesh/lost-a", wantSrcID: idClient, wantDstID: idLost, wantMTLS: true, wantHBONE: "198.18.2.14:15008",
		}},
		{"inbound HBONE to a pod behind no waypoint", "node2", false, arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.15:8080", peer: idClient,
			tunnelDst: "198.18.2.15:15008", forwarded: "198.18.1.10:40000",
			want:    deliver("198.18.2.15:8080", "198.18.1.10"),
			wantSrc: "198.18.1.10:40000", wantSrcW: "mesh/client", wantDstW: "mesh/free-a", wantSrcID: idClient, wantDstID: idFree,
			wantMTLS: true, wantHBONE: "198.18.2.15:15008",
		}},
		{"inbound plaintext", "node2", false, arrival{
			dir: dirInboundPlain, src: "198.18.2.12:5000", dst: "198.18.2.10:8080",
			wantErr: errBehindWaypoint, wantReason: echoBehind, wantSrcW: "plain/plain", wantDstW: "mesh/echo-a", wantDstID: idEcho,
		}},
		{"same node", "node2", false, arrival{
			dir: dirOutbound, src: "198.18.2.20:40000", dst: "198.18.2.10:8080", wantDir: dirLocal,
			wantErr: errBehindWaypoint, wantReason: echoBehind,
			wantSrcW: "mesh/client-2", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho, wantMTLS: true,
		}},
		{"check off: inbound HBONE from another identity", "node2", true, arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.10:8080", peer: idClient,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.1.10:40000",
			want:    deliver("198.18.2.10:8080", "198.18.1.10"),
			wantSrc: "198.18.1.10:40000", wantSrcW: "mesh/client", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"check off: the waypoint's client address still trusted", "node2", true, arrival{
			dir: dirInboundHBONE, src: "198.18.3.10:50000", dst: "198.18.2.10:8080", peer: idWP,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.9.9:1234",
			want:    deliver("198.18.2.10:8080", "198.18.9.9"),
			wantSrc: "198.18.9.9:1234", wantDstW: "mesh/echo-a", wantSrcID: idWP, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008", wantWaypoint: "mesh/wp",
		}},
		{"check off: inbound plaintext", "node2", true, arrival{
			dir: dirInboundPlain, src: "198.18.2.12:5000", dst: "198.18.2.10:8080",
			want:     deliver("198.18.2.10:8080", "198.18.2.12"),
			wantSrcW: "plain/plain", wantDstW: "mesh/echo-a", wantDstID: idEcho,
		}},
		{"check off: same node", "node2", true, arrival{
			dir: dirOutbound, src: "198.18.2.20:40000", dst: "198.18.2.10:8080", wantDir: dirLocal,
			want:     deliver("198.18.2.10:8080", "198.18.2.20"),
			wantSrcW: "mesh/client-2", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho, wantMTLS: true,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newTestNodeWith(t, tt.node, waypointSnapshot(t))
			n.cfg.AllowWaypointBypass = tt.bypass
			checkRoute(t, n, tt.a)
		})
	}
}

// TestWaypointPodRoundRobin: connections spread over the waypoint's pods, passing over
// those without an IPv4 address.
func TestWaypointPodRoundRobin(t *testing.T) {
	ip := netip.MustParseAddr
	gw := map[string]string{discovery.LabelGatewayName: "wp"}
	snap, err := discovery.Build(discovery.Input{
		Namespaces: []*discovery.Namespace{{Name: "mesh"}},
		Waypoints:  []*discovery.Waypoint{{Name: "wp", Namespace: "mesh"}},
		Workloads: []*discovery.Workload{
			{Name: "wp-1", Namespace: "mesh", IPs: []netip.Addr{ip("198.18.3.10")}, Labels: gw},
			{Name: "wp-2", Namespace: "mesh", IPs: []netip.Addr{ip("2001:db8::2")}, Labels: gw},
			{Name: "wp-3", Namespace: "mesh", IPs: []netip.Addr{ip("198.18.3.11")}, Labels: gw},
		},
	}, discovery.EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	z := &Ztunnel{}
	seen := map[string]int{}
	for range 6 {
		p, a := z.pickWaypointPod(snap.Waypoint("mesh/wp"))
		if p == nil || !a.Is4() {
			t.Fatalf("picked %v %s", p, a)
		}
		seen[p.Name+" "+a.String()]++
	}
	if seen["wp-1 198.18.3.10"] == 0 || seen["wp-3 198.18.3.11"] == 0 || len(seen) != 2 {
		t.Fatalf("picked %v; want both pods with an IPv4 address", seen)
	}
}

// TestWaypointConnections: through the entry points, a connection to a bound service
// is a CONNECT to the waypoint pod as the source, for the original destination, with
// the waypoint in the access log; refusals are logged with their reason and counted;
// plaintext to a destination behind a waypoint is reset.
func TestWaypointConnections(t *testing.T) {
	t.Run("to the waypoint", func(t *testing.T) {
		n := newTestNodeWith(t, "node1", waypointSnapshot(t))
		c, client := clientConn(t, "198.18.1.10:40000", "198.19.0.10:80")
		done := make(chan struct{})
		go func() { n.handleOutbound(context.Background(), c); close(done) }()
		client.Write([]byte("ping"))
		peer := n.pod(t)
		got := make([]byte, 4)
		if _, err := io.ReadFull(peer, got); err != nil || string(got) != "ping" {
			t.Fatalf("waypoint read %q, %v", got, err)
		}
		peer.Close()
		client.Close()
		<-done
		d := n.dialed()
		if len(d) != 1 || d[0].kind != "hbone" {
			t.Fatalf("dialed %+v, want one HBONE stream", d)
		}
		req := d[0].req
		if req.Addr != "198.18.3.10:15008" || req.Authority != "198.19.0.10:80" || req.Src != idClient ||
			req.Dst != idWP || req.Forwarded != ap("198.18.1.10:40000") || req.Host != "echo.mesh.svc.cluster.local" {
			t.Errorf("HBONE request %+v", req)
		}
		n.waitLog(t, `msg="connection closed"`, "dst.waypoint=mesh/wp", "dst.hbone_addr=198.18.3.10:15008",
			"dst.addr=198.19.0.10:80", "dst.workload=wp-1", "dst.identity="+idWP.String())
	})
	t.Run("waypoint not declared", func(t *testing.T) {
		n := newTestNodeWith(t, "node1", waypointSnapshot(t))
		c, client := clientConn(t, "198.18.1.10:40000", "198.19.0.12:80")
		n.handleOutbound(context.Background(), c)
		if !readsEOF(client) {
			t.Fatal("not refused")
		}
		if d := n.dialed(); len(d) != 0 {
			t.Fatalf("dialed %+v", d)
		}
		if v := counterValue(t, n.m.refused.WithLabelValues("outbound")); v != 1 {
			t.Fatalf("refused{outbound} = %v, want 1", v)
		}
		n.waitLog(t, `msg="connection refused"`, "dst.waypoint=mesh/gone", `reason="waypoint mesh/gone is not declared"`)
	})
	t.Run("inbound HBONE bypassing the waypoint", func(t *testing.T) {
		n := newTestNodeWith(t, "node2", waypointSnapshot(t))
		s, _ := inboundStream(t, idClient, "198.18.0.1:50000", "198.18.2.10:15008", "198.18.2.10:8080", "198.18.1.10:40000")
		n.serveHBONE(s)
		if _, code := s.answer(); code != http.StatusUnauthorized {
			t.Fatalf("answered %d, want 401", code)
		}
		if d := n.dialed(); len(d) != 0 {
			t.Fatalf("dialed %+v", d)
		}
		n.waitLog(t, `msg="connection refused"`, "only the waypoint may connect")
	})
	t.Run("plaintext reset", func(t *testing.T) {
		n := newTestNodeWith(t, "node2", waypointSnapshot(t))
		c, client := clientConn(t, "198.18.2.12:5000", "198.18.2.10:8080")
		n.handleInboundPlain(context.Background(), c)
		_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read %v, want a reset", err)
		}
		if d := n.dialed(); len(d) != 0 {
			t.Fatalf("dialed %+v", d)
		}
	})
}

// TestRecheckWaypointBinding: binding a destination to a waypoint closes the
// connections that reached it directly.
func TestRecheckWaypointBinding(t *testing.T) {
	n := newTestNodeWith(t, "node2", waypointSnapshot(t))
	s, client := inboundStream(t, idClient, "198.18.0.1:50000", "198.18.2.15:15008", "198.18.2.15:8080", "198.18.1.10:40000")
	done := make(chan struct{})
	go func() { n.serveHBONE(s); close(done) }()
	pod := n.pod(t)
	defer pod.Close()
	client.Write([]byte("x"))
	if _, err := io.ReadFull(pod, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	snap := waypointSnapshot(t)
	for _, svc := range snap.Services {
		if svc.Name == "free" {
			svc.Waypoint = "mesh/wp" // as Build would bind it
		}
	}
	for _, w := range snap.Workloads {
		if w.Name == "free-a" {
			w.BehindWaypoints = []string{"mesh/wp"}
		}
	}
	n.recheck(snap)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the direct connection is still open")
	}
	n.waitLog(t, `msg="connection closed by policy"`, "destination mesh/free-a is behind waypoint mesh/wp")
}

// TestExplainWaypoint: /policy/explain takes a waypoint's pod as an HBONE source from
// wherever it runs, and says why others are refused at a destination behind it.
func TestExplainWaypoint(t *testing.T) {
	n := newTestNodeWith(t, "node2", waypointSnapshot(t))
	n.authorize = n.authorizePolicy
	tests := []struct {
		src, dst    string
		wantPath    string
		wantAllowed bool
		wantRefused string
	}{
		{"mesh/wp-1", "mesh/echo-a:8080", "inbound", true, ""},
		{"mesh/wpw-1", "mesh/solo:8080", "inbound", true, ""}, // on this node, and not captured
		{"mesh/client", "mesh/echo-a:8080", "inbound", false, "401 Unauthorized: destination mesh/echo-a is behind waypoint mesh/wp: only the waypoint may connect"},
		{"mesh/client-2", "mesh/echo-a:8080", "local", false, "401 Unauthorized: destination mesh/echo-a is behind waypoint mesh/wp: only the waypoint may connect"},
	}
	for _, tt := range tests {
		e, err := n.Explain(ExplainQuery{Src: tt.src, Dst: tt.dst})
		if err != nil {
			t.Fatalf("%s -> %s: %v", tt.src, tt.dst, err)
		}
		if e.Path != tt.wantPath || e.Allowed != tt.wantAllowed || e.Refused != tt.wantRefused {
			t.Errorf("%s -> %s: path %s allowed %v refused %q; want %s %v %q", tt.src, tt.dst, e.Path, e.Allowed, e.Refused,
				tt.wantPath, tt.wantAllowed, tt.wantRefused)
		}
	}
}
