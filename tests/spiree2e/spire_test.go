// Package spiree2e runs Ambit with identities from a real SPIRE server and per-node agents
// (Delegated Identity API), over real eBPF capture in network namespaces.
package spiree2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambitmesh/ambit/identity/spire"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

var (
	m                       *mesh.Mesh
	client, server, server2 *netns.Pod
	echoSrv                 = map[string]*netns.EchoServer{}
	td                      = spiffeid.RequireTrustDomainFromString(mesh.TrustDomain)
)

const echoPort = 8080

func TestMain(tm *testing.M) {
	os.Exit(mesh.TestMain(tm, mesh.Options{
		Nodes: 2, PodsPerNode: 2,
		SPIRE: &mesh.SPIREOptions{SVIDTTL: 30 * time.Second},
		Model: model,
	}, setup))
}

// model: node1 runs client (sa client) and client2 (sa client2); node2 runs server and
// server2 (sa server, sa server2).
func model(t *netns.Topology) *mesh.Model {
	md := mesh.DefaultModel(t)
	names := []string{"client", "client2", "server", "server2"}
	for i := range md.Workloads {
		md.Workloads[i].Name = names[i]
		md.Workloads[i].ServiceAccount = names[i]
	}
	client, server, server2 = t.Nodes[0].Pods[0], t.Nodes[1].Pods[0], t.Nodes[1].Pods[1]
	return md
}

func setup(_ context.Context, mm *mesh.Mesh) (func(), error) {
	m = mm
	var servers []*netns.EchoServer
	for name, p := range map[string]*netns.Pod{"server": server, "server2": server2} {
		e, err := p.StartEcho(fmt.Sprintf("%s:%d", p.IP, echoPort))
		if err != nil {
			return nil, err
		}
		echoSrv[name] = e
		servers = append(servers, e)
	}
	return func() {
		for _, e := range servers {
			e.Close()
		}
	}, nil
}

func requireMesh(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	if m == nil {
		t.Fatal("mesh not started")
	}
}

func podAddr(p *netns.Pod) netip.AddrPort { return netip.AddrPortFrom(p.IP, echoPort) }

func id(sa string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/mesh/sa/"+sa) }

// serverChain fetches the certificate chain a node's ztunnel presents for a pod's HBONE
// address (the handshake then fails for lack of a client certificate: that is fine).
func serverChain(t *testing.T, from *netns.Node, pod *netns.Pod) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := from.Dial(ctx, "tcp", netip.AddrPortFrom(pod.IP, 15008).String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Client(raw, cfg)
	_ = c.HandshakeContext(ctx)
	if len(chain) == 0 {
		t.Fatalf("no certificate from %s:15008", pod.IP)
	}
	return chain
}

// Pods talk across nodes with SPIRE-issued certificates: the destination's chain verifies
// to the SPIRE bundle and names the destination's SPIFFE ID.
func TestTrafficWithSPIREIdentities(t *testing.T) {
	requireMesh(t)
	if err := mesh.Echo(context.Background(), client, podAddr(server)); err != nil {
		t.Fatal(err)
	}
	roots, err := m.Spire.Bundle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	chain := serverChain(t, m.Topo.Nodes[0], server)
	got, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil {
		t.Fatalf("server chain does not verify to the SPIRE bundle: %v", err)
	}
	if got != id("server") {
		t.Fatalf("server presented %s, want %s", got, id("server"))
	}
	if _, err := os.Stat(m.CARoot()); err == nil {
		t.Fatal("a built-in CA root exists in SPIRE mode")
	}
}

// An SVID TTL of 30 s rotates during a 40 s transfer: no drop, matching checksum, and the
// node serves a new certificate afterwards.
func TestRotationDuringLongTransfer(t *testing.T) {
	requireMesh(t)
	before := serverChain(t, m.Topo.Nodes[0], server)[0].SerialNumber
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, "tcp", podAddr(server).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent, recv := sha256.New(), sha256.New()
	done := make(chan error, 1)
	go func() {
		n, err := io.Copy(recv, c)
		if err == nil && n == 0 {
			err = errors.New("nothing echoed")
		}
		done <- err
	}()
	chunk := make([]byte, 64<<10)
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		_, _ = rand.Read(chunk)
		sent.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("write during rotation: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	if err := <-done; err != nil {
		t.Fatalf("read during rotation: %v", err)
	}
	if !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
		t.Fatal("checksum mismatch across rotation")
	}
	after := serverChain(t, m.Topo.Nodes[0], server)[0].SerialNumber
	if after.Cmp(before) == 0 {
		t.Fatalf("server certificate did not rotate within 40 s (serial %s)", before)
	}
	if err := mesh.Echo(context.Background(), client, podAddr(server)); err != nil {
		t.Fatalf("new connection after rotation: %v", err)
	}
}

// With node1's agent down, ztunnel keeps serving with the SVIDs it holds, reports the
// degraded state in readiness, and recovers when the agent returns.
func TestAgentKilledAndRestarted(t *testing.T) {
	requireMesh(t)
	node1 := m.Topo.Nodes[0]
	agent := m.Agents[node1.Name]
	ctx := context.Background()
	c, err := client.Dial(ctx, "tcp", podAddr(server).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping := func(msg string) {
		t.Helper()
		if err := mesh.EchoOn(c, msg); err != nil {
			t.Fatal(err)
		}
	}
	ping("before")
	if err := agent.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !agent.Running() {
			_ = agent.Start(context.Background())
		}
	})
	waitReady(t, node1, false)
	ping("agent down")
	if err := mesh.Echo(ctx, client, podAddr(server2)); err != nil {
		t.Fatalf("new connection while the agent is down: %v", err)
	}
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitReady(t, node1, true)
	ping("agent back")
}

func waitReady(t *testing.T, n *netns.Node, want bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := m.Ready(context.Background(), n)
		if (err == nil) == want {
			if !want && !strings.Contains(err.Error(), "degraded") {
				t.Fatalf("readiness failed without saying degraded: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness of %s did not become %v: %v", n.Name, want, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A node's agent hands out only the SVIDs of entries parented to that node: asking node1's
// agent for the server identity (registered to node2) yields nothing, node2's gives it.
func TestCrossNodeIsolation(t *testing.T) {
	requireMesh(t)
	fetch := func(node string) error {
		a := m.Agents[node]
		src, err := spire.New(spire.Config{WorkloadSocket: a.WorkloadAddr(), AdminSocket: a.AdminAddr(), TrustDomain: td})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		go src.Run(ctx)
		defer src.Close()
		src.SetWanted([]spiffeid.ID{id("server")})
		_, err = src.Certificate(ctx, id("server"))
		return err
	}
	if err := fetch("node2"); err != nil {
		t.Fatalf("node2's agent does not give node2's identity: %v", err)
	}
	if err := fetch("node1"); err == nil {
		t.Fatal("node1's agent gave out an identity registered to node2")
	}
}

// Deleting a workload's entry revokes it: new connections to that workload are refused.
// Runs last: it leaves server2 without an identity.
func TestEntryDeletedRefusesNewConnections(t *testing.T) {
	requireMesh(t)
	if err := mesh.Echo(context.Background(), client, podAddr(server2)); err != nil {
		t.Fatal(err)
	}
	entry := m.Entries["mesh/server2@node2"]
	if entry == "" {
		t.Fatalf("no entry for server2: %v", m.Entries)
	}
	if err := m.Spire.DeleteEntry(context.Background(), entry); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(45 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := mesh.Echo(ctx, client, podAddr(server2))
		cancel()
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("connections to server2 still succeed 45 s after its entry was deleted")
		}
		time.Sleep(time.Second)
	}
}
