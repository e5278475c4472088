package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/ztunnel"
)

// The waypoint's L4 side, ztunnel's part: traffic to a bound Service goes to the
// waypoint pod, and the bound pod accepts it only from there. The waypoint process is
// played by standInWaypoint, in node3's spare pod (node3 runs no ztunnel: the
// waypoint pod is not captured anyway).

const (
	wpName    = "wp"
	wpSA      = "waypoint"
	wpService = "wpecho"
)

var wpVIP = netip.AddrPortFrom(mesh.VIP(5), 80)

// wpGateway declares the waypoint as Istio users write it.
var wpGateway = mesh.WaypointGateway("mesh", "wp")

func TestWaypointL4(t *testing.T) {
	requireMesh(t)
	wpPod := m.Topo.Nodes[2].Pods[2]
	node1, node2 := nodeNamed("node1"), nodeNamed("node2")
	idClient := spiffeid.RequireFromString("spiffe://" + mesh.TrustDomain + "/ns/mesh/sa/client")

	// echo-b leaves service echo for wpecho, bound to the waypoint, whose pod joins the model.
	echoBW := m.Model.Workload("echo-b")
	oldLabels := echoBW.Labels
	echoBW.Labels = map[string]string{"app": wpService}
	m.Model.Workloads = append(m.Model.Workloads, mesh.Workload{Name: "wp-1", Namespace: "mesh", ServiceAccount: wpSA,
		Node: wpPod.Node.Name, IPs: []netip.Addr{wpPod.IP}, Labels: map[string]string{discovery.LabelGatewayName: wpName}})
	m.Model.Services = append(m.Model.Services, mesh.Service{Name: wpService, Namespace: "mesh", VIPs: []netip.Addr{wpVIP.Addr()},
		Ports: []mesh.ServicePort{{Port: wpVIP.Port(), TargetPort: echoPort}}, Selector: map[string]string{"app": wpService},
		Labels: map[string]string{discovery.LabelUseWaypoint: wpName}})
	t.Cleanup(func() {
		echoBW := m.Model.Workload("echo-b")
		echoBW.Labels = oldLabels
		m.Model.Workloads = removeWorkload(m.Model.Workloads, "wp-1")
		m.Model.Services = slices.DeleteFunc(m.Model.Services, func(s mesh.Service) bool { return s.Name == wpService })
		if err := m.Apply(); err != nil {
			t.Error(err)
		}
		for _, n := range []*netns.Node{node1, node2} {
			waitDump(t, n, "service echo back to both pods", func(d dump) bool { return d.endpoints("echo") == 2 })
		}
	})
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	m.ApplyPolicies(t, "waypoint.yaml", wpGateway)
	for _, n := range []*netns.Node{node1, node2} {
		waitDump(t, n, "the waypoint with its pod, the service bound", func(d dump) bool {
			return d.waypointPods("mesh/wp") == 1 && d.serviceWaypoint(wpService) == "mesh/wp"
		})
	}

	wp := startStandInWaypoint(t, wpPod, map[netip.AddrPort]netip.AddrPort{wpVIP: podAddr(echoB)})
	defer wp.close()
	echoServer := echoSrv["echo-b"]

	t.Run("through the waypoint", func(t *testing.T) {
		echoOK(t, client, wpVIP)
		got := wp.last(t)
		if got.Authority != wpVIP.String() || got.Peer != idClient || got.Forwarded.Addr() != client.IP {
			t.Fatalf("waypoint got CONNECT %s from %s forwarding %s; want %s from %s forwarding %s",
				got.Authority, got.Peer, got.Forwarded, wpVIP, idClient, client.IP)
		}
		if p := lastPeer(t, "echo-b"); p != client.IP {
			t.Fatalf("echo-b saw %s, want the client's address %s", p, client.IP)
		}
		for node, parts := range map[string][]string{
			"node1": {`msg="connection closed"`, "dst.waypoint=mesh/wp", fmt.Sprintf("dst.hbone_addr=%s:15008", wpPod.IP),
				"dst.addr=" + wpVIP.String(), "dst.identity=spiffe://cluster.local/ns/mesh/sa/waypoint"},
			"node2": {`msg="connection closed"`, "src.waypoint=mesh/wp", "src.addr=" + client.IP.String(),
				"src.identity=spiffe://cluster.local/ns/mesh/sa/waypoint", "dst.workload=echo-b"},
		} {
			if err := m.WaitLog(node, parts...); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("no way around it", func(t *testing.T) {
		before := len(echoServer.Peers())
		dialFails(t, client, podAddr(echoB)) // a valid mesh certificate, another identity
		if err := m.WaitLog("node2", `msg="connection refused"`, "src.identity="+idClient.String(),
			"destination mesh/echo-b is behind waypoint mesh/wp: only the waypoint may connect"); err != nil {
			t.Fatal(err)
		}
		if err := m.WaitLog("node1", `msg="connection refused"`, "dst.workload=echo-b", "401"); err != nil {
			t.Fatal(err)
		}
		dialFails(t, plainc, podAddr(echoB)) // plaintext, from outside the mesh
		if n := len(echoServer.Peers()); n != before {
			t.Fatalf("echo-b accepted %d connections around the waypoint", n-before)
		}
	})

	t.Run("waypoint stopped", func(t *testing.T) {
		before := len(echoServer.Peers())
		wp.close()
		dialFails(t, client, wpVIP)
		// Refused when the dial fails; when a pooled connection to the waypoint had not yet
		// seen it go, the stream fails on it instead ("hbone: connection closed", or the
		// write's "broken pipe" when the stream's first write finds the socket gone).
		refused := m.WaitLog("node1", `msg="connection refused"`, "dst.waypoint=mesh/wp", "dst.addr="+wpVIP.String())
		if refused != nil {
			if err := m.WaitLog("node1", "dst.waypoint=mesh/wp", "dst.addr="+wpVIP.String(), `error="hbone: `); err != nil {
				t.Fatalf("%v\n%v", refused, err)
			}
		}
		// Its pod gone from the model: refused before any dial, with the reason.
		m.Model.Workloads = removeWorkload(m.Model.Workloads, "wp-1")
		if err := m.Apply(); err != nil {
			t.Fatal(err)
		}
		waitDump(t, node1, "the waypoint without pods", func(d dump) bool { return d.waypointPods("mesh/wp") == 0 })
		dialFails(t, client, wpVIP)
		if err := m.WaitLog("node1", `msg="connection refused"`, `reason="waypoint mesh/wp has no ready pod"`); err != nil {
			t.Fatal(err)
		}
		dialFails(t, client, podAddr(echoB))
		if n := len(echoServer.Peers()); n != before {
			t.Fatalf("echo-b accepted %d connections while its waypoint was down", n-before)
		}
	})

	t.Run("binding removed", func(t *testing.T) {
		for i := range m.Model.Services {
			if m.Model.Services[i].Name == wpService {
				m.Model.Services[i].Labels = nil
			}
		}
		if err := m.Apply(); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*netns.Node{node1, node2} {
			waitDump(t, n, "the service unbound", func(d dump) bool { return d.serviceWaypoint(wpService) == "" })
		}
		echoOK(t, client, wpVIP)
		echoOK(t, client, podAddr(echoB))
		if p := lastPeer(t, "echo-b"); p != client.IP {
			t.Fatalf("echo-b saw %s, want %s", p, client.IP)
		}
	})
}

func removeWorkload(ws []mesh.Workload, name string) []mesh.Workload {
	return slices.DeleteFunc(ws, func(w mesh.Workload) bool { return w.Name == name })
}

// dump is a node's /config_dump, with the lookups the waypoint test waits on.
type dump struct{ *ztunnel.ConfigDump }

func (d dump) waypointPods(ref string) int {
	for _, w := range d.Waypoints {
		if w.Name == ref {
			return len(w.Pods)
		}
	}
	return -1
}

func (d dump) service(name string) (hostname string) {
	return name + ".mesh.svc.cluster.local"
}

func (d dump) serviceWaypoint(name string) string {
	for _, s := range d.Services {
		if s.Hostname == d.service(name) {
			return s.Waypoint
		}
	}
	return "?"
}

func (d dump) endpoints(name string) int {
	for _, s := range d.Services {
		if s.Hostname == d.service(name) {
			return len(s.Endpoints)
		}
	}
	return -1
}

// waitDump waits until the node's /config_dump satisfies ok.
func waitDump(t *testing.T, n *netns.Node, what string, ok func(dump) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, err := m.Dump(context.Background(), n)
		if err == nil && ok(dump{d}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s in /config_dump (%v)", n.Name, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// standInWaypoint plays the waypoint process at L4: it terminates HBONE on its pod's
// :15008 with the waypoint's identity (issued by the mesh CA to node3, where the model
// places the pod), records each CONNECT, and forwards it over HBONE with its own
// identity to the endpoint routes names for the authority, forwarding the client's
// address.
type standInWaypoint struct {
	ln   net.Listener
	srv  *hbone.Server
	pool *hbone.Pool
	mgr  *identity.Manager
	once sync.Once

	mu   sync.Mutex
	seen []hbone.ConnectRequest
}

func startStandInWaypoint(t *testing.T, pod *netns.Pod, routes map[netip.AddrPort]netip.AddrPort) *standInWaypoint {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(mesh.TrustDomain)
	self := spiffeid.RequireFromString(fmt.Sprintf("spiffe://%s/ns/mesh/sa/%s", mesh.TrustDomain, wpSA))
	roots, err := ca.LoadRoots(m.CARoot())
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := ca.NewClient(ca.ClientConfig{Addr: "unix://" + m.CASocket(), TokenFile: m.TokenFile(pod.Node.Name), Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := identity.NewManager(identity.ManagerConfig{Issuer: issuer, TrustDomain: td, Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := mgr.Certificate(ctx, self); err != nil {
		mgr.Close()
		t.Fatalf("waypoint certificate from the mesh CA: %v", err)
	}
	pool, err := hbone.NewPool(hbone.ClientConfig{
		Dial: pod.DialContext,
		TLSConfig: func(src, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientTLSConfig(mgr, src, dst), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	w := &standInWaypoint{pool: pool, mgr: mgr}
	w.srv, err = hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerTLSConfig(mgr, td, func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return self, nil }),
		Handler: hbone.HandlerFunc(func(s *hbone.Stream) {
			req := s.Request()
			w.mu.Lock()
			w.seen = append(w.seen, *req)
			w.mu.Unlock()
			w.forward(s, self, routes[req.Target])
		}),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.ln, err = pod.Listen("tcp", netip.AddrPortFrom(pod.IP, 15008).String())
	if err != nil {
		t.Fatal(err)
	}
	go w.srv.Serve(w.ln)
	return w
}

func (w *standInWaypoint) forward(s *hbone.Stream, self spiffeid.ID, ep netip.AddrPort) {
	if !ep.IsValid() {
		_ = s.Reject(400, "no route")
		return
	}
	dst := spiffeid.RequireFromString("spiffe://" + mesh.TrustDomain + "/ns/mesh/sa/echo")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	up, err := w.pool.Dial(ctx, hbone.Request{Addr: netip.AddrPortFrom(ep.Addr(), 15008).String(),
		Authority: ep.String(), Src: self, Dst: dst, Forwarded: s.Request().Forwarded})
	if err != nil {
		_ = s.Reject(hbone.StatusFor(err), err.Error())
		return
	}
	defer up.Close()
	if err := s.Accept(); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, s)
		_ = up.CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(s, up)
	_ = s.CloseWrite()
	<-done
}

// last is the latest CONNECT the waypoint was sent.
func (w *standInWaypoint) last(t *testing.T) hbone.ConnectRequest {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.seen) == 0 {
		t.Fatal("the waypoint saw no CONNECT")
	}
	return w.seen[len(w.seen)-1]
}

func (w *standInWaypoint) close() {
	w.once.Do(func() {
		_ = w.ln.Close()
		_ = w.srv.Close()
		_ = w.pool.Close()
		_ = w.mgr.Close()
	})
}
