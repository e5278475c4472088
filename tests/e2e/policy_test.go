package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// Policies of these tests select the echo pods (namespace mesh, app=echo) on node2 and
// are removed when each test ends.

func authz(name, spec string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: %s\n  namespace: mesh\n%s\n---\n", name, spec)
}

func peerAuthn(name, spec string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: %s\n  namespace: mesh\n%s\n---\n", name, spec)
}

// tcpRST is the TCP RST flag in pcap.Packet.Flags.
const tcpRST = 0x04

const (
	echoDenyAll = `spec:
  selector:
    matchLabels: {app: echo}`
	allowClient = `spec:
  selector:
    matchLabels: {app: echo}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/mesh/sa/client"]`
)

// deniedCount is node2's istio_tcp_connections_failed_total{response_flags="DENY"}
// summed over its series.
func deniedCount(t *testing.T) float64 {
	t.Helper()
	metrics, err := m.Metrics(context.Background(), m.Topo.Nodes[1])
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "istio_tcp_connections_failed_total{") && strings.Contains(line, `response_flags="DENY"`) {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// refusedWith401 checks that node1's ztunnel logged the refusal of a connection from
// pod with HBONE status 401.
func refusedWith401(t *testing.T, from *netns.Pod) {
	t.Helper()
	waitLog(t, "node1", "connection refused", "src.addr="+from.IP.String()+":", "status 401")
}

// A namespace deny-all and an ALLOW for one principal: that client passes, another
// pod is refused with 401, and a pod with the same service account name in another
// namespace is refused too.
func TestPolicyAllowOnePrincipal(t *testing.T) {
	requireMesh(t)
	echoOK(t, local, podAddr(echoA))
	m.ApplyPolicies(t, "deny-all.yaml", authz("deny-all", echoDenyAll), "mesh/deny-all")
	before := deniedCount(t)
	dialFails(t, client, podAddr(echoA))
	dialFails(t, local, podAddr(echoA))
	refusedWith401(t, local)
	if got := deniedCount(t); got < before+2 {
		t.Errorf("DENY failures on node2 went from %v to %v, want +2", before, got)
	}

	m.ApplyPolicies(t, "allow-client.yaml", authz("allow-client", allowClient), "mesh/allow-client")
	echoOK(t, client, podAddr(echoA))
	echoOK(t, client, echoVIP) // through the service VIP too
	dialFails(t, local, podAddr(echoA))

	// "client" in another namespace: same account name, other principal.
	moveWorkload(t, "local", "other", "client")
	dialFails(t, local, podAddr(echoA))
	echoOK(t, client, podAddr(echoA))
}

// moveWorkload puts the named workload into namespace ns (declared, ambient) with
// service account sa for the rest of the test, waiting until its ztunnel holds the
// new identity.
func moveWorkload(t *testing.T, name, ns, sa string) {
	t.Helper()
	w := m.Model.Workload(name)
	oldNS, oldSA := w.Namespace, w.ServiceAccount
	if m.Model.Namespace(ns) == nil {
		m.Model.Namespaces = append(m.Model.Namespaces, mesh.Namespace{Name: ns, Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}})
	}
	w.Namespace, w.ServiceAccount = ns, sa
	applyAndWaitIdentity(t, w.Node, fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", mesh.TrustDomain, ns, sa))
	t.Cleanup(func() {
		w := m.Model.Workload(name)
		w.Namespace, w.ServiceAccount = oldNS, oldSA
		applyAndWaitIdentity(t, w.Node, fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", mesh.TrustDomain, oldNS, oldSA))
	})
}

func applyAndWaitIdentity(t *testing.T, node, id string) {
	t.Helper()
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	n := nodeNamed(node)
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, err := m.Dump(context.Background(), n)
		if err == nil {
			for _, c := range d.Certificates {
				if c.ID == id {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds no certificate for %s", node, id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func nodeNamed(name string) *netns.Node {
	for _, n := range m.Topo.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// ipBlocks and ports select by address and port; a DENY beats an ALLOW that matches.
func TestPolicyIPBlocksPortsAndDenyBeatsAllow(t *testing.T) {
	requireMesh(t)
	m.ApplyPolicies(t, "by-ip.yaml", authz("by-ip", fmt.Sprintf(`spec:
  selector:
    matchLabels: {app: echo}
  rules:
  - from:
    - source:
        ipBlocks: ["%s/32"]
    to:
    - operation:
        ports: ["%d"]`, client.IP, echoPort)), "mesh/by-ip")
	echoOK(t, client, podAddr(echoA))
	dialFails(t, local, podAddr(echoA))

	m.ApplyPolicies(t, "deny-client.yaml", authz("deny-client", fmt.Sprintf(`spec:
  selector:
    matchLabels: {app: echo}
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["%s"]`, client.IP)), "mesh/deny-client")
	dialFails(t, client, podAddr(echoA))
}

// AUDIT and dry-run policies change nothing on the wire; they are logged.
func TestPolicyDryRunAndAudit(t *testing.T) {
	requireMesh(t)
	m.ApplyPolicies(t, "shadow.yaml", authz("shadow", `  annotations:
    istio.io/dry-run: "true"
`+echoDenyAll)+authz("audit-all", `spec:
  selector:
    matchLabels: {app: echo}
  action: AUDIT
  rules: [{}]`), "mesh/shadow", "mesh/audit-all")
	echoOK(t, client, podAddr(echoA))
	waitLog(t, "node2", `dry_run="deny: no ALLOW policy matched (applying: mesh/shadow)"`, "audit=mesh/audit-all")
}

// waitLog waits for a line of the node's ztunnel output that contains every part.
func waitLog(t *testing.T, node string, parts ...string) {
	t.Helper()
	if err := m.WaitLog(node, parts...); err != nil {
		t.Fatal(err)
	}
}

// STRICT refuses plaintext from outside the mesh while HBONE passes; PERMISSIVE and a
// port-level override accept it.
func TestPeerAuthenticationStrict(t *testing.T) {
	requireMesh(t)
	echoOK(t, plainc, podAddr(echoA)) // PERMISSIVE by default
	// From a pod outside the mesh on the same node too, with its address preserved.
	echoOK(t, plainc, podAddr(local))
	if got := lastPeer(t, "local"); got != plainc.IP {
		t.Errorf("same-node plaintext delivered from %s, want the client's %s", got, plainc.IP)
	}
	m.ApplyPolicies(t, "strict.yaml", peerAuthn("strict", "spec:\n  mtls: {mode: STRICT}"), "mesh/strict")
	dialFails(t, plainc, podAddr(local))
	waitLog(t, "node1", `msg="connection refused"`, "src.addr="+plainc.IP.String()+":", "mTLS STRICT on port 8080: plaintext refused")
	before := deniedCount(t)
	// On the wire (tcpdump between the nodes): the plaintext client's connection ends in a
	// reset from the pod's address, and nothing comes back.
	file := captureUnderlay(t, func() { dialFails(t, plainc, podAddr(echoA)) })
	pkts, err := pcap.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	reset := false
	for _, p := range pcap.Filter(pkts, pcap.Involving(plainc.IP)) {
		if p.Src.Addr() == echoA.IP && p.Proto == pcap.ProtoTCP {
			reset = reset || p.Flags&tcpRST != 0
			if len(p.Payload) > 0 {
				t.Errorf("STRICT pod answered plaintext with data: %s", p)
			}
		}
	}
	if !reset {
		t.Errorf("no reset from %s to the plaintext client on the wire:\n%v", echoA.IP, pcap.Filter(pkts, pcap.Involving(plainc.IP)))
	}
	echoOK(t, client, podAddr(echoA))
	if got := deniedCount(t); got < before+1 {
		t.Errorf("DENY failures on node2 went from %v to %v, want +1", before, got)
	}

	m.ApplyPolicies(t, "port.yaml", peerAuthn("echo-port", fmt.Sprintf(`spec:
  selector:
    matchLabels: {app: echo}
  portLevelMtls:
    %d: {mode: PERMISSIVE}`, echoPort)), "mesh/echo-port")
	echoOK(t, plainc, podAddr(echoA))
}

// A policy change closes the open connections it no longer allows, HBONE and plaintext,
// even in the middle of a transfer, and leaves the allowed ones alone.
func TestPolicyClosesLiveConnections(t *testing.T) {
	requireMesh(t)
	open := func(from *netns.Pod) net.Conn {
		t.Helper()
		c, err := from.Dial(context.Background(), "tcp", podAddr(echoA).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := mesh.EchoOn(c, "before"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	cut, plain := open(local), open(plainc)
	cutEnded, plainEnded := mesh.Stream(cut), mesh.Stream(plain)
	// The policy lands while the allowed client's transfer runs (here, on the test's
	// goroutine), and the denied ones stream.
	applied := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		applied <- m.WritePolicies("allow-client.yaml", authz("allow-client", allowClient)+
			peerAuthn("strict", "spec:\n  mtls: {mode: STRICT}"), "mesh/allow-client", "mesh/strict")
	}()
	t.Cleanup(func() {
		if err := m.RemovePolicies("allow-client.yaml"); err != nil {
			t.Error(err)
		}
	})
	sha256Transfer(t, client, podAddr(echoA), 1<<30) // allowed before and after (a few seconds)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	for name, ended := range map[string]<-chan error{"denied HBONE": cutEnded, "plaintext under STRICT": plainEnded} {
		select {
		case err := <-ended:
			if isTimeout(err) {
				t.Errorf("%s transfer stalled instead of being closed: %v", name, err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("%s transfer still running after the policy change", name)
		}
	}
	waitLog(t, "node2", "connection closed by policy", "src.addr="+local.IP.String()+":")
	waitLog(t, "node2", "connection closed by policy", "src.addr="+plainc.IP.String()+":")
}

// An invalid object fails closed: a DENY that cannot be read denies everything it
// selects, and /config_dump names the file, line, field and problem.
func TestInvalidPolicyFailsClosed(t *testing.T) {
	requireMesh(t)
	m.ApplyPolicies(t, "bad.yaml", authz("bad-deny", `spec:
  selector:
    matchLabels: {app: echo}
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["198.18.300.0/24"]`), "mesh/bad-deny")
	dialFails(t, client, podAddr(echoA))
	d, err := m.Dump(context.Background(), m.Topo.Nodes[1])
	if err != nil {
		t.Fatal(err)
	}
	want := `bad.yaml:13: spec.rules[0].from[0].source.ipBlocks[0]: "198.18.300.0/24" is not an IP address or CIDR`
	found := false
	for _, p := range d.PolicyProblems {
		found = found || strings.HasSuffix(p, want)
	}
	if !found {
		t.Errorf("policyProblems %q, want one ending %q", d.PolicyProblems, want)
	}
}

// HTTP fields need a waypoint: at ztunnel an ALLOW rule with them never matches and a
// DENY rule ignores them (both the safer outcome), with a warning naming the policy.
func TestPolicyHTTPFieldsAtL4(t *testing.T) {
	requireMesh(t)
	m.ApplyPolicies(t, "l7-allow.yaml", authz("allow-get", `spec:
  selector:
    matchLabels: {app: echo}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]
    to: [{operation: {methods: ["GET"]}}]`), "mesh/allow-get")
	dialFails(t, client, podAddr(echoA))
	waitLog(t, "node2", "policy enforced differently at L4", "policy=mesh/allow-get", "never matches")
	m.ApplyPolicies(t, "l7-deny.yaml", authz("deny-post", `spec:
  selector:
    matchLabels: {app: echo}
  action: DENY
  rules:
  - to: [{operation: {methods: ["POST"]}}]`)+authz("allow-all", `spec:
  selector:
    matchLabels: {app: echo}
  rules: [{}]`), "mesh/deny-post", "mesh/allow-all")
	dialFails(t, local, podAddr(echoA))
	waitLog(t, "node2", "policy enforced differently at L4", "policy=mesh/deny-post", "denies more than written")
}
