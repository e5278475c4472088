package spiretest_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	spiretest "github.com/ambitmesh/ambit/tests/spire"
)

func startAgent(tb testing.TB, ctx context.Context, s *spiretest.Server, node string, delegates ...string) *spiretest.Agent {
	tb.Helper()
	a, err := s.StartAgent(ctx, node, delegates)
	if err != nil {
		tb.Fatalf("start agent %s: %v", node, err)
	}
	return a
}

func createEntry(tb testing.TB, ctx context.Context, s *spiretest.Server, id, parent string, selectors ...string) string {
	tb.Helper()
	entryID, err := s.CreateEntry(ctx, id, parent, selectors, 0)
	if err != nil {
		tb.Fatalf("create entry: %v", err)
	}
	return entryID
}

// noIdentityYet is the agent's answer until it has synced the caller's entry.
func noIdentityYet(err error) bool {
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.PermissionDenied && s.Message() == "no identity issued"
}

// fetchOwnSVID fetches the caller's X509-SVID from a's Workload API, retrying while the agent
// syncs.
func fetchOwnSVID(tb testing.TB, ctx context.Context, a *spiretest.Agent) *x509svid.SVID {
	tb.Helper()
	for {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(a.WorkloadAddr()))
		if err == nil {
			return svid
		}
		if !noIdentityYet(err) || ctx.Err() != nil {
			tb.Fatalf("fetch own SVID from agent %s: %v", a.Node, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func dialAdmin(tb testing.TB, a *spiretest.Agent) delegatedv1.DelegatedIdentityClient {
	tb.Helper()
	conn, err := grpc.NewClient(a.AdminAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("dial admin socket of %s: %v", a.Node, err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return delegatedv1.NewDelegatedIdentityClient(conn)
}

func selectors(sels ...string) []*types.Selector {
	var out []*types.Selector
	for _, s := range sels {
		typ, value, _ := strings.Cut(s, ":")
		out = append(out, &types.Selector{Type: typ, Value: value})
	}
	return out
}

// svidStream is a SubscribeToX509SVIDs stream with its updates parsed.
type svidStream struct {
	tb     testing.TB
	node   string
	stream delegatedv1.DelegatedIdentity_SubscribeToX509SVIDsClient
	first  *delegatedv1.SubscribeToX509SVIDsResponse
}

// subscribe opens a delegated SVID stream for sels through a, retrying while a has not
// synced the caller's entry. The stream ends with ctx.
func subscribe(ctx context.Context, c delegatedv1.DelegatedIdentityClient, sels ...string) (delegatedv1.DelegatedIdentity_SubscribeToX509SVIDsClient, *delegatedv1.SubscribeToX509SVIDsResponse, error) {
	for {
		stream, err := c.SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{Selectors: selectors(sels...)})
		if err != nil {
			return nil, nil, err
		}
		resp, err := stream.Recv()
		if err == nil {
			return stream, resp, nil
		}
		if !noIdentityYet(err) || ctx.Err() != nil {
			return nil, nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustSubscribe(tb testing.TB, ctx context.Context, a *spiretest.Agent, sels ...string) *svidStream {
	tb.Helper()
	ctx, cancel := context.WithCancel(ctx)
	tb.Cleanup(cancel)
	stream, first, err := subscribe(ctx, dialAdmin(tb, a), sels...)
	if err != nil {
		tb.Fatalf("subscribe to SVIDs for %v through agent %s: %v", sels, a.Node, err)
	}
	return &svidStream{tb: tb, node: a.Node, stream: stream, first: first}
}

// next returns the next update's SVIDs by SPIFFE ID, checking each parses with its key.
func (s *svidStream) next() map[string]*x509svid.SVID { return s.nextFor("an update") }

func (s *svidStream) nextFor(what string) map[string]*x509svid.SVID {
	s.tb.Helper()
	resp := s.first
	s.first = nil
	if resp == nil {
		var err error
		if resp, err = s.stream.Recv(); err != nil {
			s.tb.Fatalf("receive SVID update from agent %s (waiting for %s): %v", s.node, what, err)
		}
	}
	out := map[string]*x509svid.SVID{}
	for _, sk := range resp.GetX509Svids() {
		svid, err := x509svid.ParseRaw(bytes.Join(sk.GetX509Svid().GetCertChain(), nil), sk.GetX509SvidKey())
		if err != nil {
			s.tb.Fatalf("parse SVID %v from agent %s: %v", sk.GetX509Svid().GetId(), s.node, err)
		}
		out[svid.ID.String()] = svid
	}
	return out
}

// until returns the first update for which ok holds.
func (s *svidStream) until(what string, ok func(map[string]*x509svid.SVID) bool) map[string]*x509svid.SVID {
	s.tb.Helper()
	for {
		u := s.nextFor(what)
		s.tb.Logf("agent %s: update with %v", s.node, slices.Sorted(maps.Keys(u)))
		if ok(u) {
			return u
		}
	}
}

func has(id string) func(map[string]*x509svid.SVID) bool {
	return func(u map[string]*x509svid.SVID) bool { return u[id] != nil }
}

func verifyChain(tb testing.TB, td string, bundle []*x509.Certificate, svid *x509svid.SVID) {
	tb.Helper()
	b := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), bundle)
	id, _, err := x509svid.Verify(svid.Certificates, b)
	if err != nil {
		tb.Fatalf("verify SVID %s against the SPIRE bundle: %v", svid.ID, err)
	}
	if id != svid.ID {
		tb.Fatalf("verified ID %s, want %s", id, svid.ID)
	}
}

// TestSPIRE runs one server and three agents: node1 and node2 authorize the tunnel as a
// delegate, node3 authorizes someone else.
func TestSPIRE(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real SPIRE processes")
	}
	if testingNotRoot() {
		t.Skip("needs root (private network namespace)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const svidTTL = time.Minute
	start := time.Now()
	srv := spiretest.StartServerForTest(t, ctx, spiretest.Options{SVIDTTL: svidTTL})
	t.Logf("server up in %v", time.Since(start))
	td := srv.TrustDomain
	bundle, err := srv.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}

	var tunnel string
	for _, node := range []string{"node1", "node2", "node3"} {
		if tunnel, err = srv.RegisterTunnel(ctx, node, 0); err != nil {
			t.Fatal(err)
		}
	}
	if want := "spiffe://" + td + "/ns/ambit-system/sa/ambit-ztunnel"; tunnel != want {
		t.Fatalf("tunnel ID %s, want %s", tunnel, want)
	}
	if _, err := srv.RegisterTunnel(ctx, "node1", 0); err != nil {
		t.Fatalf("register the tunnel again: %v (want idempotent)", err)
	}
	start = time.Now()
	node1 := startAgent(t, ctx, srv, "node1", tunnel)
	node2 := startAgent(t, ctx, srv, "node2", tunnel)
	node3 := startAgent(t, ctx, srv, "node3", "spiffe://"+td+"/ns/ambit-system/sa/someone-else")
	t.Logf("three agents up in %v", time.Since(start))
	for _, a := range []*spiretest.Agent{node1, node2, node3} {
		if !strings.HasPrefix(a.SPIFFEID, "spiffe://"+td+"/spire/agent/join_token/") {
			t.Fatalf("agent %s SPIFFE ID %q, want a join_token agent ID", a.Node, a.SPIFFEID)
		}
	}

	fooBar := "spiffe://" + td + "/ns/foo/sa/bar"
	createEntry(t, ctx, srv, fooBar, srv.NodeID("node1"), "k8s:ns:foo", "k8s:sa:bar")
	// Created after foo/bar: once node2 serves the marker, it has synced past foo/bar too.
	marker := "spiffe://" + td + "/ns/marker/sa/node2"
	createEntry(t, ctx, srv, marker, srv.NodeID("node2"), "k8s:ns:marker", "k8s:sa:node2")

	t.Run("WorkloadAPIOwnSVID", func(t *testing.T) {
		start := time.Now()
		svid := fetchOwnSVID(t, ctx, node1)
		t.Logf("own SVID after %v", time.Since(start))
		if svid.ID.String() != tunnel {
			t.Fatalf("own SVID %s, want %s", svid.ID, tunnel)
		}
		verifyChain(t, td, bundle, svid)
		if life := time.Until(svid.Certificates[0].NotAfter); life > svidTTL {
			t.Fatalf("own SVID valid for %v more, over the configured %v", life, svidTTL)
		}
	})

	t.Run("DelegatedNode1", func(t *testing.T) {
		s := mustSubscribe(t, ctx, node1, "k8s:ns:foo", "k8s:sa:bar")
		u := s.until("foo/bar", has(fooBar))
		if len(u) != 1 {
			t.Fatalf("SVIDs %v, want only %s", slices.Sorted(maps.Keys(u)), fooBar)
		}
		verifyChain(t, td, bundle, u[fooBar])
	})

	t.Run("CrossNodeIsolation", func(t *testing.T) {
		// One request with both pods' selectors (an entry matches when its selectors are a
		// subset of the request's): node2 serves its own marker, and in the same update
		// withholds node1's foo/bar.
		s := mustSubscribe(t, ctx, node2, "k8s:ns:foo", "k8s:sa:bar", "k8s:ns:marker", "k8s:sa:node2")
		u := s.until("marker", has(marker))
		if u[fooBar] != nil || len(u) != 1 {
			t.Fatalf("node2 served %v, want only %s", slices.Sorted(maps.Keys(u)), marker)
		}
		// Node2 has synced: the very request node1 answers gets no SVID from node2.
		u = mustSubscribe(t, ctx, node2, "k8s:ns:foo", "k8s:sa:bar").next()
		if len(u) != 0 {
			t.Fatalf("node2 served %v for node1's pod, want none", slices.Sorted(maps.Keys(u)))
		}
		// Control: node1 does serve both sets, so the selectors above do match entries.
		s = mustSubscribe(t, ctx, node1, "k8s:ns:foo", "k8s:sa:bar", "k8s:ns:marker", "k8s:sa:node2")
		u = s.until("foo/bar", has(fooBar))
		if u[marker] != nil {
			t.Fatalf("node1 served node2's %s", marker)
		}
	})

	t.Run("NotADelegate", func(t *testing.T) {
		// The caller holds the tunnel's SVID on node3, but node3 authorizes another ID.
		if svid := fetchOwnSVID(t, ctx, node3); svid.ID.String() != tunnel {
			t.Fatalf("own SVID on node3 %s, want %s", svid.ID, tunnel)
		}
		_, _, err := subscribe(ctx, dialAdmin(t, node3), "k8s:ns:foo", "k8s:sa:bar")
		st, _ := status.FromError(err)
		if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "authorized delegate") {
			t.Fatalf("subscribe as a non-delegate: %v, want PermissionDenied (not an authorized delegate)", err)
		}
	})

	t.Run("EntryDeleted", func(t *testing.T) {
		gone := "spiffe://" + td + "/ns/gone/sa/gone"
		entry := createEntry(t, ctx, srv, gone, srv.NodeID("node1"), "k8s:ns:gone", "k8s:sa:gone")
		s := mustSubscribe(t, ctx, node1, "k8s:ns:gone", "k8s:sa:gone")
		start := time.Now()
		s.until("gone", has(gone))
		t.Logf("new entry served after %v", time.Since(start))
		start = time.Now()
		if err := srv.DeleteEntry(ctx, entry); err != nil {
			t.Fatal(err)
		}
		s.until("no gone", func(u map[string]*x509svid.SVID) bool { return u[gone] == nil })
		t.Logf("deleted entry dropped after %v", time.Since(start))
	})

	t.Run("AgentRestart", func(t *testing.T) {
		for _, stop := range []struct {
			name string
			fn   func() error
		}{{"Stop", node1.Stop}, {"Kill", node1.Kill}} {
			id := node1.SPIFFEID
			if err := stop.fn(); err != nil {
				t.Fatalf("%s: %v", stop.name, err)
			}
			if node1.Running() {
				t.Fatalf("agent running after %s", stop.name)
			}
			start := time.Now()
			if err := node1.Start(ctx); err != nil {
				t.Fatalf("start after %s: %v", stop.name, err)
			}
			if node1.SPIFFEID != id {
				t.Fatalf("after %s the agent is %s, want it to resume as %s", stop.name, node1.SPIFFEID, id)
			}
			if svid := fetchOwnSVID(t, ctx, node1); svid.ID.String() != tunnel {
				t.Fatalf("own SVID after %s: %s", stop.name, svid.ID)
			}
			mustSubscribe(t, ctx, node1, "k8s:ns:foo", "k8s:sa:bar").until("foo/bar", has(fooBar))
			t.Logf("after %s: serving again in %v", stop.name, time.Since(start))
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		for _, tc := range []struct {
			name, id, parent string
			sels             []string
			want             string
		}{
			{"bad ID", "foo", srv.NodeID("node1"), []string{"k8s:ns:a"}, "SPIFFE ID"},
			{"other trust domain", "spiffe://example.org/x", srv.NodeID("node1"), []string{"k8s:ns:a"}, "not in trust domain"},
			{"bad parent", "spiffe://" + td + "/x", "", []string{"k8s:ns:a"}, "parent ID"},
			{"no selectors", "spiffe://" + td + "/x", srv.NodeID("node1"), nil, "no selectors"},
			{"selector without value", "spiffe://" + td + "/x", srv.NodeID("node1"), []string{"k8s"}, "want type:value"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := srv.CreateEntry(ctx, tc.id, tc.parent, tc.sels, 0)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("CreateEntry: %v, want an error containing %q", err, tc.want)
				}
			})
		}
		if _, err := srv.CreateEntry(ctx, fooBar, srv.NodeID("node1"), []string{"k8s:ns:foo", "k8s:sa:bar"}, 0); !errors.Is(err, spiretest.ErrEntryExists) {
			t.Fatalf("duplicate entry: %v, want ErrEntryExists", err)
		}
		if _, err := srv.StartAgent(ctx, "node1", nil); err == nil {
			t.Fatal("second agent for node1 started")
		}
		if _, err := srv.StartAgent(ctx, "a/b", nil); err == nil {
			t.Fatal("agent with node name a/b started")
		}
		if err := srv.DeleteEntry(ctx, "no-such-entry"); err == nil {
			t.Fatal("deleting a missing entry succeeded")
		}
	})
}

func TestStartServerBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts spiretest.Options
		want string
	}{
		{"trust domain with scheme", spiretest.Options{TrustDomain: "spiffe://cluster.local"}, "bare name"},
		{"bad trust domain", spiretest.Options{TrustDomain: "Bad Domain"}, "trust domain"},
		{"negative TTL", spiretest.Options{SVIDTTL: -time.Second}, "negative TTL"},
		{"missing binaries", spiretest.Options{Binaries: spiretest.Binaries{Server: "/nonexistent/s", Agent: "/nonexistent/a"}}, "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := spiretest.StartServer(t.Context(), tc.opts)
			if err == nil {
				_ = s.Close()
				t.Fatal("StartServer succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartServer: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
