// Package e2e runs Ambit end to end: real ztunnel and CA processes, real eBPF capture,
// pods in network namespaces, tcpdump on the wire between nodes. Run as root.
package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The shared mesh: three nodes; node1 and node2 run ztunnel, node3 plays a node that is
// outside our control (no ztunnel) for impersonation tests.
//
//	node1: client (mesh), local (mesh), plainc (plain namespace)
//	node2: echo-a, echo-b (mesh, service "echo"), plains (plain namespace)
//	node3: target (mesh, sa target; no ztunnel), rogue (mesh, sa rogue)
var (
	m                                   *mesh.Mesh
	client, local, plainc               *netns.Pod
	echoA, echoB, plains, target, rogue *netns.Pod
	echoVIP                             = netip.AddrPortFrom(mesh.VIP(0), 80)
	echoSrv                             = map[string]*netns.EchoServer{}
)

const (
	echoPort = 8080
	poolIdle = 2 * time.Second
)

func TestMain(tm *testing.M) {
	os.Exit(mesh.TestMain(tm, mesh.Options{
		Nodes: 3, PodsPerNode: 3,
		Ztunnels:  []string{"node1", "node2"},
		Model:     model,
		IstioEcho: true, // the waypoint's backends
		// Pooled HBONE connections close soon after their last stream, so a test can
		// wait for its traffic to open new ones (TestWireIsEncrypted needs to see the
		// handshakes, whatever ran before it).
		ExtraArgs: []string{"-hbone-pool-idle-timeout", poolIdle.String()},
	}, setup))
}

func setup(_ context.Context, mm *mesh.Mesh) (func(), error) {
	m = mm
	var servers []*netns.EchoServer
	cleanup := func() {
		for _, e := range servers {
			e.Close()
		}
	}
	for name, p := range map[string]*netns.Pod{"client": client, "local": local, "plainc": plainc,
		"echo-a": echoA, "echo-b": echoB, "plains": plains} {
		e, err := p.StartEcho(fmt.Sprintf("%s:%d", p.IP, echoPort))
		if err != nil {
			cleanup()
			return nil, fmt.Errorf("echo in %s: %w", name, err)
		}
		echoSrv[name] = e
		servers = append(servers, e)
	}
	return cleanup, nil
}

// model names the pods and lays out the shared mesh.
func model(t *netns.Topology) *mesh.Model {
	n1, n2, n3 := t.Nodes[0], t.Nodes[1], t.Nodes[2]
	client, local, plainc = n1.Pods[0], n1.Pods[1], n1.Pods[2]
	echoA, echoB, plains = n2.Pods[0], n2.Pods[1], n2.Pods[2]
	target, rogue = n3.Pods[0], n3.Pods[1]
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	w := func(p *netns.Pod, name, ns, sa string, labels map[string]string) mesh.Workload {
		return mesh.Workload{Name: name, Namespace: ns, ServiceAccount: sa, Node: p.Node.Name,
			IPs: []netip.Addr{p.IP}, Labels: labels}
	}
	md := &mesh.Model{
		Namespaces: []mesh.Namespace{{Name: "mesh", Labels: ambient}, {Name: "plain"}},
		Workloads: []mesh.Workload{
			w(client, "client", "mesh", "client", map[string]string{"app": "client"}),
			w(local, "local", "mesh", "local", map[string]string{"app": "local"}),
			w(plainc, "plainc", "plain", "default", nil),
			w(echoA, "echo-a", "mesh", "echo", map[string]string{"app": "echo"}),
			w(echoB, "echo-b", "mesh", "echo", map[string]string{"app": "echo"}),
			w(plains, "plains", "plain", "default", nil),
			w(target, "target", "mesh", "target", nil),
			w(rogue, "rogue", "mesh", "rogue", nil),
		},
		Services: []mesh.Service{{
			Name: "echo", Namespace: "mesh", VIPs: []netip.Addr{mesh.VIP(0)},
			Ports: []mesh.ServicePort{{Port: 80, TargetPort: echoPort}}, Selector: map[string]string{"app": "echo"},
		}},
	}
	for _, n := range t.Nodes {
		md.Nodes = append(md.Nodes, mesh.Node{Name: n.Name, Addresses: []netip.Addr{n.IP}})
	}
	return md
}

func requireMesh(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	if m == nil {
		t.Fatal("mesh not started")
	}
}
