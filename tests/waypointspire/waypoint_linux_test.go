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
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
	ctx, agent, td, dir := startSPIRE(t)
	wp := spiffeid.RequireFromPath(td, "/ns/apps/sa/wp")

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

// startSPIRE starts a SPIRE server and node1's agent, which issues the test process
// (unix:uid:0) spiffe://<td>/ns/apps/sa/wp, and writes the model files into the
// returned directory. The context ends with the test or after two minutes.
func startSPIRE(tb testing.TB) (context.Context, *spiretest.Agent, spiffeid.TrustDomain, string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("starts real SPIRE processes")
	}
	netns.RequireRoot(tb)
	ctx, cancel := context.WithTimeout(tb.Context(), 2*time.Minute)
	tb.Cleanup(cancel)
	srv := spiretest.StartServerForTest(tb, ctx, spiretest.Options{})
	td := spiffeid.RequireTrustDomainFromString(srv.TrustDomain)
	wp := spiffeid.RequireFromPath(td, "/ns/apps/sa/wp")
	if _, err := srv.CreateEntry(ctx, wp.String(), srv.NodeID("node1"), []string{"unix:uid:0"}, 0); err != nil {
		tb.Fatal(err)
	}
	agent, err := srv.StartAgent(ctx, "node1", nil)
	if err != nil {
		tb.Fatalf("start agent: %v", err)
	}
	dir := tb.TempDir()
	for name, content := range map[string]string{"mesh.yaml": model, "manifests.yaml": manifests} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return ctx, agent, td, dir
}

// TestWaypointBinarySPIRE runs the built waypoint with -identity spire: it becomes ready
// and presents the SVID the agent issued.
func TestWaypointBinarySPIRE(t *testing.T) {
	ctx, agent, td, dir := startSPIRE(t)
	wp := spiffeid.RequireFromPath(td, "/ns/apps/sa/wp")
	bin := filepath.Join(dir, "waypoint")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/ambitmesh/ambit/cmd/waypoint").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	a := addrs{hbone: freeAddr(t), ready: freeAddr(t)}
	cmd := exec.Command(bin, "-name", "wp", "-namespace", "apps", "-trust-domain", td.Name(),
		"-listen", a.hbone, "-readiness-addr", a.ready, "-metrics-addr", "off", "-admin-addr", "off",
		"-model", filepath.Join(dir, "mesh.yaml"), "-policies", filepath.Join(dir, "manifests.yaml"),
		"-identity", "spire", "-spire-workload-socket", agent.WorkloadAddr(), "-drain-timeout", "1s")
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Errorf("waypoint exited: %v", err)
		}
	})
	eventually(t, "waypoint ready", func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("waypoint exited early: %v", err)
		default:
		}
		return readiness(t, a.ready) == ""
	})

	// The client is this process, with the same SVID from the agent.
	client, err := spire.NewOwn(spire.OwnConfig{WorkloadSocket: agent.WorkloadAddr()})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- client.Run(runCtx) }()
	defer func() { stop(); <-done }()
	if _, err := client.Certificate(ctx, wp); err != nil {
		t.Fatal(err)
	}
	c := handshake(t, a.hbone, identity.ClientTLSConfig(client, wp, wp))
	if c.err != nil {
		t.Fatalf("HBONE handshake: %v", c.err)
	}
	if got, err := x509svid.IDFromCert(c.state.PeerCertificates[0]); err != nil || got != wp {
		t.Errorf("waypoint presented %v (%v), want %s", got, err, wp)
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
