package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

// TestRunIssues starts the whole command on a unix socket and drives it with
// a Manager, as a node tunnel would.
func TestRunIssues(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "mesh.yaml")
	writeModel(t, model, modelV1, time.Now())
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("node1 secret1\nnode2 secret2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config{
		stateDir:    filepath.Join(dir, "state"),
		trustDomain: "cluster.local",
		listen:      "unix://" + filepath.Join(dir, "ca.sock"),
		tokens:      tokens,
		model:       model,
		leafTTL:     time.Hour,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
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
		roots, err = ca.LoadRoots(filepath.Join(cfg.stateDir, ca.RootFile))
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
	client, err := ca.NewClient(ca.ClientConfig{Addr: cfg.listen, TokenFile: tokenFile, Roots: roots})
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

func TestRunFlagErrors(t *testing.T) {
	for _, cfg := range []config{
		{stateDir: t.TempDir(), trustDomain: "cluster.local", listen: "127.0.0.1:0", model: "x"},
		{stateDir: t.TempDir(), trustDomain: "cluster.local", listen: "127.0.0.1:0", tokens: "x"},
		{stateDir: t.TempDir(), trustDomain: "Bad Domain", listen: "127.0.0.1:0", tokens: "x", model: "x"},
	} {
		if err := run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("run(%+v) succeeded", cfg)
		}
	}
}
