package spire

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/tests/netns"
	spiretest "github.com/ambitmesh/ambit/tests/spire"
)

// TestRealSPIRECARotation lets a real SPIRE server rotate its CA (ca_ttl 90 s: the next CA
// is prepared at half its life and activated at five sixths) while an mTLS connection built
// from the Source stays open. The bundle must hold both roots, the SVID must move to the
// new CA, the established connection must keep working, and a new handshake must succeed
// with the new SVID verified against the bundle.
func TestRealSPIRECARotation(t *testing.T) {
	r, ctx := startReal(t, "waits for a real SPIRE CA rotation (~80 s)", 3*time.Minute,
		spiretest.Options{CATTL: 90 * time.Second, SVIDTTL: 30 * time.Second})
	tdom, pod, agent := r.td, r.pod, r.agent
	s, err := New(Config{WorkloadSocket: agent.WorkloadAddr(), AdminSocket: agent.AdminAddr(), TrustDomain: tdom,
		Logger: slog.New(slog.DiscardHandler), MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s.SetWanted([]spiffeid.ID{pod})
	runSource(t, s)

	// Like ztunnel's readiness: own SVID, bundle and the pod SVID, before any handshake.
	for !s.Ready() {
		if ctx.Err() != nil {
			t.Fatalf("source not ready: %s", s.Status())
		}
		time.Sleep(100 * time.Millisecond)
	}
	first, err := s.Certificate(ctx, pod)
	if err != nil {
		t.Fatalf("pod SVID: %v", err)
	}
	oldIssuer := string(first.Leaf.RawIssuer)

	// An mTLS connection between two ends that both present the pod identity.
	pick := func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return pod, nil }
	ln, err := tls.Listen("tcp", "127.0.0.1:0", identity.ServerTLSConfig(s, tdom, pick))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), identity.ClientTLSConfig(s, pod, pod))
		if err != nil {
			t.Fatalf("mTLS handshake: %v (status %q)", err, s.Status())
		}
		return c
	}
	echo := func(c net.Conn, msg string) {
		t.Helper()
		if err := netns.Ping(c, msg); err != nil {
			t.Fatal(err)
		}
	}
	established := dial()
	defer established.Close()
	echo(established, "before rotation")

	// Wait for the SVID to come from the new CA, checking the bundle along the way.
	sawTwoRoots := false
	var rotated *tls.Certificate
	for rotated == nil {
		if ctx.Err() != nil {
			t.Fatalf("no SVID from a new CA before the deadline (two roots seen: %v)", sawTwoRoots)
		}
		if b, err := s.GetX509BundleForTrustDomain(tdom); err == nil && len(b.X509Authorities()) >= 2 {
			sawTwoRoots = true
		}
		c, err := s.Certificate(ctx, pod)
		if err == nil && string(c.Leaf.RawIssuer) != oldIssuer {
			rotated = c
			break
		}
		echo(established, "during rotation")
		time.Sleep(time.Second)
	}
	if !sawTwoRoots {
		t.Fatal("the bundle never held the old and the new root together")
	}
	b, err := s.GetX509BundleForTrustDomain(tdom)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, r := range b.X509Authorities() {
		roots.AddCert(r)
	}
	for name, c := range map[string]*tls.Certificate{"old": first, "new": rotated} {
		inter := x509.NewCertPool()
		for _, der := range c.Certificate[1:] {
			if ic, err := x509.ParseCertificate(der); err == nil {
				inter.AddCert(ic)
			}
		}
		// The old SVID has expired by now (30 s TTL); what matters is that its root is still
		// trusted, so verify it at a moment of its own lifetime.
		at := time.Now()
		if name == "old" {
			at = c.Leaf.NotAfter.Add(-time.Second)
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s SVID does not verify against the bundle during rotation: %v", name, err)
		}
	}
	echo(established, "after rotation")
	fresh := dial()
	defer fresh.Close()
	echo(fresh, "new handshake with the new CA")
}
