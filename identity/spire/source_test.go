package spire

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambitmesh/ambit/identity"
)

// These tests run the Source against a fake agent over real unix sockets,
// so they use real time with short backoffs and grace; waits are bounded
// polls, never timing assertions.

const fakeGrace = 300 * time.Millisecond

var tunnelID = wid("ambit-system", "ztunnel")

func newSource(tb testing.TB, f *fakeAgent, ids ...spiffeid.ID) *Source {
	tb.Helper()
	s, err := New(Config{
		WorkloadSocket: "unix://" + f.wlPath,
		AdminSocket:    "unix://" + f.adminPath,
		TrustDomain:    td,
		Logger:         slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		MinBackoff:     10 * time.Millisecond,
		MaxBackoff:     200 * time.Millisecond,
		RevokeGrace:    fakeGrace,
	})
	if err != nil {
		tb.Fatal(err)
	}
	s.SetWanted(ids)
	runSource(tb, s)
	return s
}

func waitReady(tb testing.TB, s *Source) {
	tb.Helper()
	eventually(tb, "source ready", s.Ready)
}

func serial(tb testing.TB, s *Source, id spiffeid.ID) *big.Int {
	tb.Helper()
	c, err := s.Certificate(context.Background(), id)
	if err != nil {
		tb.Fatalf("Certificate(%s): %v", id, err)
	}
	return c.Leaf.SerialNumber
}

// handshake connects a client and a server that both present id from s over
// an in-memory pipe, with the configurations ztunnel uses.
func handshake(tb testing.TB, s *Source, id spiffeid.ID) (client, server *tls.Conn) {
	tb.Helper()
	c1, c2 := net.Pipe()
	server = tls.Server(c1, identity.ServerTLSConfig(s, td, func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return id, nil }))
	client = tls.Client(c2, identity.ClientTLSConfig(s, id, id))
	// Closing the raw pipe: tls.Conn.Close would wait up to 5 s to write close_notify to an idle peer.
	tb.Cleanup(func() { c1.Close(); c2.Close() })
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		tb.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		tb.Fatalf("server handshake: %v", err)
	}
	return client, server
}

func roundTrip(tb testing.TB, client, server *tls.Conn) {
	tb.Helper()
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 4)
		_, err := io.ReadFull(server, buf)
		errc <- err
	}()
	if _, err := client.Write([]byte("ping")); err != nil {
		tb.Fatalf("write on established connection: %v", err)
	}
	if err := <-errc; err != nil {
		tb.Fatalf("read on established connection: %v", err)
	}
}

func TestDelegatedSVIDChainsToBundle(t *testing.T) {
	ca, f, a, a1 := agentWithPodA(t)
	// An entry with fewer selectors also matches a's subscription; it must not be taken for a.
	f.setEntry(wid("foo", "ns-wide"), ca.issue(t, wid("foo", "ns-wide"), time.Hour), "k8s:ns:foo")
	s := newSource(t, f, a)
	waitReady(t, s)

	c, err := s.Certificate(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf.SerialNumber.Cmp(a1.leaf.SerialNumber) != 0 {
		t.Errorf("serving serial %v, want %v", c.Leaf.SerialNumber, a1.leaf.SerialNumber)
	}
	got, _, err := x509svid.ParseAndVerify(c.Certificate, s)
	if err != nil || got != a {
		t.Fatalf("delegated SVID does not verify to the SPIRE bundle: %v %v", got, err)
	}
	client, server := handshake(t, s, a)
	if id, err := identity.PeerID(client.ConnectionState()); err != nil || id != a {
		t.Errorf("client sees server %v (%v), want %s", id, err, a)
	}
	roundTrip(t, client, server)

	own, err := s.Certificate(context.Background(), tunnelID)
	if err != nil {
		t.Fatalf("own SVID: %v", err)
	}
	if own.Leaf.SerialNumber.Cmp(f.own.leaf.SerialNumber) != 0 {
		t.Errorf("own SVID serial %v, want %v", own.Leaf.SerialNumber, f.own.leaf.SerialNumber)
	}
	var ids []string
	for _, ci := range s.Certificates() {
		ids = append(ids, ci.ID+"="+ci.State)
	}
	want := []string{tunnelID.String() + "=valid", a.String() + "=valid"}
	if !slices.Equal(ids, want) {
		t.Errorf("Certificates %v, want %v", ids, want)
	}
	if st := s.Status(); st != "" {
		t.Errorf("Status %q, want healthy", st)
	}
}

func TestRotationKeepsEstablishedConnections(t *testing.T) {
	ca, f, a, a1 := agentWithPodA(t)
	a2 := ca.issue(t, a, time.Hour)
	s := newSource(t, f, a)
	waitReady(t, s)
	oldClient, oldServer := handshake(t, s, a)

	f.setEntry(a, a2, "k8s:ns:foo", "k8s:sa:a")
	eventually(t, "rotated SVID served", func() bool { return serial(t, s, a).Cmp(a2.leaf.SerialNumber) == 0 })

	roundTrip(t, oldClient, oldServer)
	if got := oldClient.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(a1.leaf.SerialNumber) != 0 {
		t.Errorf("established connection's peer serial %v, want the old %v", got, a1.leaf.SerialNumber)
	}
	newClient, newServer := handshake(t, s, a)
	if got := newClient.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(a2.leaf.SerialNumber) != 0 {
		t.Errorf("new connection's peer serial %v, want the new %v", got, a2.leaf.SerialNumber)
	}
	roundTrip(t, newClient, newServer)
}

func TestCARotationTwoRoots(t *testing.T) {
	ca, ca2 := newCA(t), newCA(t)
	f := newFakeAgent(t, ca, tunnelID)
	a := wid("foo", "a")
	f.setEntry(a, ca.issue(t, a, time.Hour), "k8s:ns:foo", "k8s:sa:a")
	s := newSource(t, f, a)
	waitReady(t, s)

	f.setRoots(ca.cert.Raw, ca2.cert.Raw)
	eventually(t, "bundle with both roots", func() bool {
		b, err := s.GetX509BundleForTrustDomain(td)
		return err == nil && len(b.X509Authorities()) == 2
	})
	old, _ := s.Certificate(context.Background(), a)
	oldClient, oldServer := handshake(t, s, a) // old SVID, new bundle

	a2 := ca2.issue(t, a, time.Hour)
	f.setEntry(a, a2, "k8s:ns:foo", "k8s:sa:a")
	eventually(t, "SVID from the new CA", func() bool { return serial(t, s, a).Cmp(a2.leaf.SerialNumber) == 0 })
	for _, c := range [][][]byte{old.Certificate, a2.chain} {
		if _, _, err := x509svid.ParseAndVerify(c, s); err != nil {
			t.Errorf("SVID does not verify during CA rotation: %v", err)
		}
	}
	handshake(t, s, a)
	roundTrip(t, oldClient, oldServer)
}

func TestEmptyAndDuplicateUpdatesDoNotRevoke(t *testing.T) {
	ca := newCA(t)
	f := newFakeAgent(t, ca, tunnelID)
	f.firstEmpty = true
	a := wid("foo", "a")
	f.setEntry(a, ca.issue(t, a, time.Hour), "k8s:ns:foo", "k8s:sa:a")
	s := newSource(t, f, a)
	waitReady(t, s)
	c1, _ := s.Certificate(context.Background(), a)

	f.sendEmpty()
	f.resend()
	f.resend()
	time.Sleep(2 * fakeGrace)
	c2, err := s.Certificate(context.Background(), a)
	if err != nil {
		t.Fatalf("after empty and duplicate updates: %v", err)
	}
	if c2 != c1 {
		t.Error("duplicate updates replaced the certificate")
	}
	if !s.Ready() {
		t.Errorf("not ready: %s", s.Status())
	}
}

func TestEntryDeletedRefusesNewConnections(t *testing.T) {
	ca := newCA(t)
	f := newFakeAgent(t, ca, tunnelID)
	a := wid("foo", "a")
	f.setEntry(a, ca.issue(t, a, time.Hour), "k8s:ns:foo", "k8s:sa:a")
	s := newSource(t, f, a)
	waitReady(t, s)
	client, server := handshake(t, s, a)

	f.deleteEntry(a)
	eventually(t, "identity revoked", func() bool {
		return errors.Is(certErr(s, a), identity.ErrNotAuthorized)
	})
	if s.Ready() || !strings.Contains(s.Status(), "not issued or revoked") {
		t.Errorf("Ready %v, Status %q after revocation", s.Ready(), s.Status())
	}
	if st := stateOf(s, a); st != StateRevoked {
		t.Errorf("state %q, want %q", st, StateRevoked)
	}
	// New handshakes for the identity fail; the established connection is left alone.
	c1, c2 := net.Pipe()
	srv := tls.Server(c1, identity.ServerTLSConfig(s, td, func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return a, nil }))
	cl := tls.Client(c2, identity.ClientTLSConfig(s, tunnelID, a))
	go func() { srv.Handshake(); c1.Close() }()
	if err := cl.Handshake(); err == nil {
		t.Error("handshake with a revoked identity succeeded")
	}
	c2.Close()
	roundTrip(t, client, server)

	a2 := ca.issue(t, a, time.Hour)
	f.setEntry(a, a2, "k8s:ns:foo", "k8s:sa:a")
	eventually(t, "identity re-issued", func() bool {
		c, err := s.Certificate(context.Background(), a)
		return err == nil && c.Leaf.SerialNumber.Cmp(a2.leaf.SerialNumber) == 0
	})
	waitReady(t, s)
}

func TestAgentOutage(t *testing.T) {
	_, f, a, a1 := agentWithPodA(t)
	s := newSource(t, f, a)
	waitReady(t, s)

	f.stop()
	eventually(t, "degraded status", func() bool { return strings.Contains(s.Status(), "agent unreachable since") })
	if s.Ready() {
		t.Error("ready while the agent is unreachable")
	}
	time.Sleep(2 * fakeGrace) // an outage longer than the grace window revokes nothing
	if got := serial(t, s, a); got.Cmp(a1.leaf.SerialNumber) != 0 {
		t.Errorf("serving %v during the outage, want the held %v", got, a1.leaf.SerialNumber)
	}
	if st := stateOf(s, a); st != StateDegraded {
		t.Errorf("state %q during the outage, want %q", st, StateDegraded)
	}
	if _, err := s.GetX509BundleForTrustDomain(td); err != nil {
		t.Errorf("bundle during the outage: %v", err)
	}
	handshake(t, s, a)

	f.mu.Lock()
	f.firstEmpty = true // a restarted agent often answers empty first
	f.mu.Unlock()
	f.start(t)
	waitReady(t, s)
	if got := serial(t, s, a); got.Cmp(a1.leaf.SerialNumber) != 0 {
		t.Errorf("serving %v after reconnect, want %v", got, a1.leaf.SerialNumber)
	}
	if subs := f.svidSubscriptions(); len(subs) != 1 {
		t.Errorf("%d subscriptions after reconnect, want 1", len(subs))
	}
}

func TestNotIssuedYetIsRetried(t *testing.T) {
	ca := newCA(t)
	f := newFakeAgent(t, ca, tunnelID)
	f.deny = 5
	a := wid("foo", "a")
	f.setEntry(a, ca.issue(t, a, time.Hour), "k8s:ns:foo", "k8s:sa:a")
	s := newSource(t, f, a)
	waitReady(t, s)
}

func TestSetWantedReleasesSubscriptions(t *testing.T) {
	ca := newCA(t)
	f := newFakeAgent(t, ca, tunnelID)
	a, b := wid("foo", "a"), wid("bar", "b")
	f.setEntry(a, ca.issue(t, a, time.Hour), "k8s:ns:foo", "k8s:sa:a")
	f.setEntry(b, ca.issue(t, b, time.Hour), "k8s:ns:bar", "k8s:sa:b")
	s := newSource(t, f)
	waitReady(t, s) // nothing wanted yet
	if n := len(f.svidSubscriptions()); n != 0 {
		t.Errorf("%d subscriptions with nothing wanted", n)
	}

	s.SetWanted([]spiffeid.ID{a, b})
	waitReady(t, s)
	if n := len(f.svidSubscriptions()); n != 2 {
		t.Errorf("%d subscriptions, want 2", n)
	}

	s.SetWanted([]spiffeid.ID{a})
	eventually(t, "b's subscription closed", func() bool {
		subs := f.svidSubscriptions()
		return len(subs) == 1 && slices.Equal(subs[0], []string{"k8s:ns:foo", "k8s:sa:a"})
	})
	if err := certErr(s, b); !errors.Is(err, identity.ErrUnavailable) {
		t.Errorf("Certificate of a released id: %v, want ErrUnavailable", err)
	}
	for _, ci := range s.Certificates() {
		if ci.ID == b.String() {
			t.Errorf("released id still listed: %+v", ci)
		}
	}
	s.SetWanted(nil)
	eventually(t, "all subscriptions closed", func() bool { return len(f.svidSubscriptions()) == 0 })
}

func TestRunLifecycle(t *testing.T) {
	ca := newCA(t)
	f := newFakeAgent(t, ca, tunnelID)
	s, err := New(Config{WorkloadSocket: f.wlPath, AdminSocket: f.adminPath, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st != "not running" {
		t.Errorf("Status before Run %q", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitReady(t, s)
	if err := s.Run(context.Background()); err == nil {
		t.Error("second concurrent Run succeeded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after ctx end: %v", err)
	}
	// Run again, then Close ends it.
	go func() { done <- s.Run(context.Background()) }()
	waitReady(t, s)
	s.Close()
	if err := <-done; err != nil {
		t.Errorf("Run after Close: %v", err)
	}
	s.Close()
	if err := s.Run(context.Background()); err != nil {
		t.Errorf("Run on a closed source: %v", err)
	}
	if err := certErr(s, tunnelID); !errors.Is(err, identity.ErrUnavailable) {
		t.Errorf("Certificate on a closed source: %v", err)
	}
}
