package spire

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/tests/netns"
	spiretest "github.com/ambitmesh/ambit/tests/spire"
)

// TestRealSPIRE runs the Source against a real spire-server and spire-agent:
// the tunnel's own SVID from the Workload API, a pod SVID of its node from
// the Delegated Identity API, a pod of another node never issued, and an
// entry deletion revoking the identity.
func TestRealSPIRE(t *testing.T) {
	r, ctx := startReal(t, "starts real SPIRE processes", 2*time.Minute, spiretest.Options{})
	srv, tdom, tunnel, pod, agent := r.srv, r.td, r.tunnel, r.pod, r.agent
	// Parented to node2: node1's agent must never hand it out.
	foreign := spiffeid.RequireFromPath(tdom, "/ns/foo/sa/elsewhere")
	if _, err := srv.CreateEntry(ctx, foreign.String(), srv.NodeID("node2"), []string{"k8s:ns:foo", "k8s:sa:elsewhere"}, 0); err != nil {
		t.Fatal(err)
	}

	const grace = 2 * time.Second
	s, err := New(Config{
		WorkloadSocket: agent.WorkloadAddr(),
		AdminSocket:    agent.AdminAddr(),
		TrustDomain:    tdom,
		Logger:         slog.New(slog.NewTextHandler(t.Output(), nil)),
		MinBackoff:     100 * time.Millisecond,
		MaxBackoff:     time.Second,
		RevokeGrace:    grace,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.SetWanted([]spiffeid.ID{pod, foreign})
	runSource(t, s)

	certCtx, certCancel := context.WithTimeout(ctx, time.Minute)
	c, err := s.Certificate(certCtx, pod)
	certCancel()
	if err != nil {
		t.Fatalf("pod SVID: %v (status %q)", err, s.Status())
	}
	roots, err := srv.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// SVIDs and bundles come from separate subscriptions: the bundle may arrive a moment
	// after the first SVID.
	eventuallyWithin(t, time.Minute, "source bundle", func() bool {
		_, err := s.GetX509BundleForTrustDomain(tdom)
		return err == nil
	})
	// The chain verifies to the server's bundle and to the one the Source serves.
	for name, b := range map[string]x509bundle.Source{"server bundle": x509bundle.FromX509Authorities(tdom, roots), "source bundle": s} {
		if got, _, err := x509svid.ParseAndVerify(c.Certificate, b); err != nil || got != pod {
			t.Errorf("pod SVID against the %s: %v %v", name, got, err)
		}
	}
	eventuallyWithin(t, time.Minute, "own SVID", func() bool {
		own, err := s.Certificate(ctx, spiffeid.RequireFromString(tunnel))
		return err == nil && own.Leaf.URIs[0].String() == tunnel
	})
	eventuallyWithin(t, time.Minute, "foreign identity not issued", func() bool {
		return errors.Is(certErr(s, foreign), identity.ErrNotAuthorized)
	})
	if st := s.Status(); !strings.Contains(st, "1 wanted identities not issued") {
		t.Errorf("Status %q, want the foreign identity reported", st)
	}
	s.SetWanted([]spiffeid.ID{pod})
	eventuallyWithin(t, time.Minute, "ready", s.Ready)

	if err := srv.DeleteEntry(ctx, r.podEntry); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, time.Minute, "deleted entry revoked", func() bool {
		return errors.Is(certErr(s, pod), identity.ErrNotAuthorized)
	})
	if st := stateOf(s, pod); st != StateRevoked {
		t.Errorf("state after deletion %q, want %q", st, StateRevoked)
	}
}

// realSPIRE is a real SPIRE server and node1's agent, which serves the tunnel (unix uid 0)
// and pod, spiffe://<td>/ns/foo/sa/bar on node1.
type realSPIRE struct {
	srv      *spiretest.Server
	td       spiffeid.TrustDomain
	tunnel   string // the tunnel's SPIFFE ID
	pod      spiffeid.ID
	podEntry string
	agent    *spiretest.Agent
}

// startReal starts a realSPIRE that tb's cleanup stops, and returns it with a context
// that ends after timeout (or with the test). With -short it skips tb, saying why the
// test is long.
func startReal(tb testing.TB, long string, timeout time.Duration, opts spiretest.Options) (*realSPIRE, context.Context) {
	tb.Helper()
	if testing.Short() {
		tb.Skip(long)
	}
	netns.RequireRoot(tb)
	ctx, cancel := context.WithTimeout(tb.Context(), timeout)
	tb.Cleanup(cancel)
	r := &realSPIRE{srv: spiretest.StartServerForTest(tb, ctx, opts)}
	r.td = spiffeid.RequireTrustDomainFromString(r.srv.TrustDomain)
	var err error
	if r.tunnel, err = r.srv.RegisterTunnel(ctx, "node1", 0); err != nil {
		tb.Fatal(err)
	}
	r.pod = spiffeid.RequireFromPath(r.td, "/ns/foo/sa/bar")
	if r.podEntry, err = r.srv.CreateEntry(ctx, r.pod.String(), r.srv.NodeID("node1"), []string{"k8s:ns:foo", "k8s:sa:bar"}, 0); err != nil {
		tb.Fatal(err)
	}
	if r.agent, err = r.srv.StartAgent(ctx, "node1", []string{r.tunnel}); err != nil {
		tb.Fatalf("start agent: %v", err)
	}
	return r, ctx
}
