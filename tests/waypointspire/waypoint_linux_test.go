// Package waypointspire runs the waypoint with its own identity from a real SPIRE server
// and agent (the Workload API, no delegation).
package waypointspire

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/spire"
	"github.com/ambitmesh/ambit/internal/serve"
	"github.com/ambitmesh/ambit/tests/netns"
	spiretest "github.com/ambitmesh/ambit/tests/spire"
	"github.com/ambitmesh/ambit/waypoint"
)

// The model: waypoint apps/wp, one pod (service account wp) on node1.
const (
	model = `
namespaces:
- name: apps
nodes:
- name: node1
workloads:
- name: wp-0
  namespace: apps
  serviceAccount: wp
  node: node1
  ips: [198.18.0.10]
  labels: {gateway.networking.k8s.io/gateway-name: wp}
`
	manifests = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
`
)

// TestWaypointSPIREIdentity: the agent issues the waypoint process (unix:uid:0, as the
// test runs) spiffe://<td>/ns/apps/sa/wp; the waypoint serves HBONE with it, refuses a
// handshake for another identity, and a waypoint configured for another service account
// is not ready and says what SPIRE issued.
func TestWaypointSPIREIdentity(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real SPIRE processes")
	}
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	srv := spiretest.StartServerForTest(t, ctx, spiretest.Options{})
	td := spiffeid.RequireTrustDomainFromString(srv.TrustDomain)
	wp := spiffeid.RequireFromPath(td, "/ns/apps/sa/wp")
	if _, err := srv.CreateEntry(ctx, wp.String(), srv.NodeID("node1"), []string{"unix:uid:0"}, 0); err != nil {
		t.Fatal(err)
	}
	agent, err := srv.StartAgent(ctx, "node1", nil)
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	dir := t.TempDir()
	for name, content := range map[string]string{"mesh.yaml": model, "manifests.yaml": manifests} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	good, goodSrc := startWaypoint(t, agent, dir, td, "wp")
	bad, _ := startWaypoint(t, agent, dir, td, "other")

	// Ready once the agent has issued the SVID.
	eventually(t, "waypoint ready", func() bool { return readiness(t, good.ready) == "" })

	// A client holding the same trust domain's SVID verifies the waypoint as wp.
	c := handshake(t, good.hbone, identity.ClientTLSConfig(goodSrc, wp, wp))
	if c.err != nil {
		t.Fatalf("HBONE handshake: %v", c.err)
	}
	if got, err := x509svid.IDFromCert(c.state.PeerCertificates[0]); err != nil || got != wp {
		t.Errorf("waypoint presented %v (%v), want %s", got, err, wp)
	}
	if c.state.NegotiatedProtocol != identity.ALPN {
		t.Errorf("ALPN %q, want %q", c.state.NegotiatedProtocol, identity.ALPN)
	}
	// A client expecting another identity refuses the waypoint.
	other := spiffeid.RequireFromPath(td, "/ns/apps/sa/other")
	if c := handshake(t, good.hbone, identity.ClientTLSConfig(goodSrc, wp, other)); c.err == nil {
		t.Errorf("handshake expecting %s succeeded", other)
	}
	// The source refuses another identity.
	if _, err := goodSrc.Certificate(ctx, other); !errors.Is(err, identity.ErrNotAuthorized) {
		t.Errorf("Certificate(%s): %v, want ErrNotAuthorized", other, err)
	}

	// The mis-configured waypoint (service account other) is not ready, names both IDs,
	// and serves no certificate.
	want := "SPIRE issued " + wp.String() + ", want " + other.String()
	eventually(t, "mis-registered readiness", func() bool { return strings.Contains(readiness(t, bad.ready), want) })
	if c := handshake(t, bad.hbone, identity.ClientTLSConfig(goodSrc, wp, other)); c.err == nil {
		t.Errorf("the mis-configured waypoint completed a handshake")
	}
}

type addrs struct{ hbone, ready string }

// startWaypoint runs an in-process waypoint apps/wp with service account sa and its
// identity from agent, until the test ends.
func startWaypoint(tb testing.TB, agent *spiretest.Agent, dir string, td spiffeid.TrustDomain, sa string) (addrs, *spire.OwnSource) {
	tb.Helper()
	log := slog.New(slog.NewTextHandler(tb.Output(), nil)).With("sa", sa)
	src, err := spire.NewOwn(spire.OwnConfig{WorkloadSocket: agent.WorkloadAddr(), Logger: log,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	a := addrs{hbone: freeAddr(tb), ready: freeAddr(tb)}
	w, err := waypoint.New(waypoint.Config{
		Name: "wp", Namespace: "apps", ServiceAccount: sa, TrustDomain: td.Name(), ListenAddr: a.hbone,
		ModelPath: filepath.Join(dir, "mesh.yaml"), ManifestPath: filepath.Join(dir, "manifests.yaml"),
		Serve: serve.Config{ReadinessAddr: a.ready, MetricsAddr: serve.Off, AdminAddr: serve.Off},
	}, waypoint.Deps{Identity: src, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("waypoint Run: %v", err)
		}
	})
	return a, src
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// readiness returns "" when addr's readiness endpoint answers 200, else its answer.
func readiness(tb testing.TB, addr string) string {
	tb.Helper()
	resp, err := http.Get("http://" + addr + serve.ReadyPath)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	return resp.Status + ": " + string(body)
}

type result struct {
	state tls.ConnectionState
	err   error
}

func handshake(tb testing.TB, addr string, cfg *tls.Config) result {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return result{err: err}
	}
	defer c.Close()
	return result{state: c.(*tls.Conn).ConnectionState()}
}

// eventually polls cond; the bound only keeps a broken test from hanging.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
	}
}
