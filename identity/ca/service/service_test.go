package service

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"flag"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

// writeMesh writes a model with workload client on node1 and echo on node2.
func writeMesh(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, "mesh.yaml")
	mesh := "workloads:\n" +
		"  - {name: client, namespace: default, serviceAccount: client, node: node1, ips: [198.18.1.10]}\n" +
		"  - {name: echo, namespace: default, serviceAccount: echo, node: node2, ips: [198.18.2.10]}\n"
	if err := os.WriteFile(path, []byte(mesh), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// TestRunIssues starts the whole command on a unix socket and drives it with
// a Manager, as a node tunnel would.
func TestRunIssues(t *testing.T) {
	dir := t.TempDir()
	model := writeMesh(t, dir)
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("node1 secret1\nnode2 secret2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		StateDir:  filepath.Join(dir, "state"),
		Listen:    "unix://" + filepath.Join(dir, "ca.sock"),
		TokenFile: tokens,
		ModelPath: model,
		LeafTTL:   time.Hour,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	// Wait until the root is written and the socket accepts (readiness, not timing).
	var roots []*x509.Certificate
	for i := 0; ; i++ {
		var err error
		roots, err = ca.LoadRoots(filepath.Join(cfg.StateDir, ca.RootFile))
		if _, serr := os.Stat(filepath.Join(dir, "ca.sock")); err == nil && serr == nil {
			break
		}
		if i == 1000 {
			t.Fatal("ambit-ca did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tokenFile := filepath.Join(dir, "node1.token")
	if err := os.WriteFile(tokenFile, []byte("secret1"), 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := ca.NewClient(ca.ClientConfig{Addr: cfg.Listen, TokenFile: tokenFile, Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	m, err := identity.NewManager(identity.ManagerConfig{Issuer: client, Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	own := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	c, err := m.Certificate(context.Background(), own)
	if err != nil {
		t.Fatalf("own identity: %v", err)
	}
	if got := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore); got > time.Hour+time.Minute {
		t.Errorf("leaf lifetime %v, want -leaf-ttl 1h", got)
	}
	foreign := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/echo")
	if _, err := m.Certificate(context.Background(), foreign); !errors.Is(err, identity.ErrNotAuthorized) {
		t.Fatalf("identity of another node's workload: %v, want ErrNotAuthorized", err)
	}

	// Direct CSR with a wrong key type goes through the same path and is refused as bad input.
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if _, _, err := client.Issue(context.Background(), own, csr); err == nil {
		t.Fatal("P-384 CSR accepted")
	}
}

func TestRunConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no tokens", Config{ModelPath: "x"}, "-tokens is required"},
		{"no model", Config{TokenFile: "x"}, "-model is required"},
		{"bad trust domain", Config{TrustDomain: "Bad Domain", TokenFile: "x", ModelPath: "x"}, `-trust-domain "Bad Domain"`},
		{"missing token file", Config{TokenFile: "/nonexistent/tokens", ModelPath: "x"}, "load tokens"},
		{"relative unix socket", Config{Listen: "unix://ca.sock", TokenFile: "tokens", ModelPath: "mesh.yaml"}, "unix socket path must be absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.cfg.StateDir = filepath.Join(dir, "state")
			if tt.cfg.Listen == "" {
				tt.cfg.Listen = "127.0.0.1:0"
			}
			if tt.cfg.TokenFile == "tokens" {
				tt.cfg.TokenFile = filepath.Join(dir, "tokens")
				if err := os.WriteFile(tt.cfg.TokenFile, []byte("node1 secret1\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				tt.cfg.ModelPath = writeMesh(t, dir)
			}
			err := Run(t.Context(), tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Run: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// The flags and defaults ambit-ca has always had (the Helm chart and the test harness
// pass them).
func TestRegisterFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("ambit-ca", flag.ContinueOnError)
	c.RegisterFlags(fs)
	got := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { got[f.Name] = f.DefValue })
	want := map[string]string{
		"state-dir": "/var/lib/ambit-ca", "trust-domain": "cluster.local", "listen": "unix:///run/ambit/ca.sock",
		"tokens": "", "model": "", "leaf-ttl": "24h0m0s", "kube": "false", "kubeconfig": "",
		"token-audience": "ambit-ca", "ztunnel-service-account": "ambit-system/ambit-ztunnel", "root-configmap": "",
	}
	if !maps.Equal(got, want) {
		t.Fatalf("flags\n got %v\nwant %v", got, want)
	}
	// The chart's arguments.
	err := fs.Parse([]string{"-kube", "-listen=:15012", "-state-dir=/var/lib/ambit-ca", "-trust-domain=example.org", "-leaf-ttl=12h",
		"-token-audience=ambit-ca", "-ztunnel-service-account=ambit/ambit-ztunnel, ambit/other", "-root-configmap=ambit/ambit-ca-root"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Kube || c.Listen != ":15012" || c.TrustDomain != "example.org" || c.LeafTTL != 12*time.Hour ||
		!slices.Equal(c.ZtunnelServiceAccounts, []string{"ambit/ambit-ztunnel", "ambit/other"}) || c.RootConfigMap != "ambit/ambit-ca-root" {
		t.Fatalf("parsed %+v", c)
	}
	if c := (Config{Kubeconfig: "/k"}).WithDefaults(); !c.Kube {
		t.Error("-kubeconfig does not imply -kube")
	}
	if c := (Config{ZtunnelServiceAccounts: []string{}}).WithDefaults(); len(c.ZtunnelServiceAccounts) != 0 {
		t.Error("an empty -ztunnel-service-account took the default")
	}
}
