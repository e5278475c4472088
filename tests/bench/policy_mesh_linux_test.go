//go:build !nomesh

package main

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/policy"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The ambit-policy path's model validates as ztunnel reads it, holds 10,000 workloads
// with the topology's own unchanged, and its policies admit the benchmark's client to
// the destination after evaluating the many that apply there; the ambit path's model is
// left as it was.
func TestPolicyCaseModel(t *testing.T) {
	topo := &netns.Topology{}
	for i := 1; i <= 2; i++ {
		n := &netns.Node{Name: fmt.Sprintf("node%d", i), IP: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})}
		for j := range 2 {
			n.Pods = append(n.Pods, &netns.Pod{Name: fmt.Sprintf("node%d-pod%d", i, j), IP: netip.AddrFrom4([4]byte{198, 18, byte(i), byte(10 + j)})})
		}
		topo.Nodes = append(topo.Nodes, n)
	}
	f := &fabric{topo: topo}
	f.podRoles()
	m := &mesh.Mesh{Topo: topo, Model: benchModel(topo)}
	pc, err := newPolicyCase(m, f.meshClient, f.meshServer, f.plainClient)
	if err != nil {
		t.Fatal(err)
	}
	if pc.base != m.Model || len(pc.base.Workloads) != 4 || pc.dstNode != topo.Nodes[1] {
		t.Fatalf("base model changed or wrong destination node: %d workloads, node %v", len(pc.base.Workloads), pc.dstNode)
	}
	snap, err := discovery.Parse("mesh.yaml", []byte(pc.big.YAML()), discovery.EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Workloads) != policyCaseWorkloads {
		t.Fatalf("%d workloads, want %d", len(snap.Workloads), policyCaseWorkloads)
	}
	for _, p := range []*netns.Pod{f.meshClient, f.meshServer, f.plainClient} {
		w := snap.WorkloadByIP(p.IP)
		if w == nil || w.Name != p.Name || w.Enrolled != (p != f.plainClient) {
			t.Fatalf("%s: workload %+v", p.Name, w)
		}
	}
	if w := snap.WorkloadByIP(pc.big.Workloads[len(pc.big.Workloads)-1].IPs[0]); w == nil || !w.Enrolled {
		t.Fatalf("synthetic workload %+v, want enrolled", w)
	}

	seq := 0
	ms, probs, err := policy.ParseManifests(policyFile, []byte(pc.s.Manifests), &seq)
	if err != nil || len(probs) > 0 {
		t.Fatalf("policies: %v %v", err, probs.Err())
	}
	set := policy.NewSet("", ms.Authorizations, nil)
	dst := snap.WorkloadByIP(f.meshServer.IP)
	applied := set.For(dst.Namespace, dst.Labels)
	if n := len(applied.Authorizations()); n < 50 || n != len(pc.s.Applying) || len(ms.Authorizations) != 1000 {
		t.Fatalf("%d of %d policies apply to the destination, want %d (at least 50)", n, len(ms.Authorizations), len(pc.s.Applying))
	}
	for _, port := range []uint16{echoPort, iperfPort} {
		in := policy.Input{Principal: "cluster.local/ns/mesh/sa/" + f.meshClient.Name, SrcIP: f.meshClient.IP, DstIP: f.meshServer.IP, DstPort: port}
		if d := applied.Evaluate(&in); !d.Allow || d.Policy != pc.s.Admit {
			t.Errorf("port %d: %v, want admitted by %s", port, d, pc.s.Admit)
		}
	}
	if d := applied.Evaluate(&policy.Input{SrcIP: f.plainClient.IP, DstIP: f.meshServer.IP, DstPort: echoPort}); d.Allow {
		t.Errorf("plaintext from %s: %v", f.plainClient.Name, d)
	}
}
