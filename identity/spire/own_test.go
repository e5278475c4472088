package spire

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/tests/background"
)

// ownAgent is a fake agent issuing wp (spiffe://cluster.local/ns/apps/sa/wp) to
// this process, and an OwnSource on it running until the test ends.
func ownAgent(tb testing.TB) (*testCA, *fakeAgent, *OwnSource, spiffeid.ID) {
	tb.Helper()
	ca := newCA(tb)
	wp := wid("apps", "wp")
	f := newFakeAgent(tb, ca, wp)
	s, err := NewOwn(OwnConfig{WorkloadSocket: "unix://" + f.wlPath, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	background.Run(tb, s.Run)
	return ca, f, s, wp
}

func TestOwnSourceServesItsSVID(t *testing.T) {
	_, _, s, wp := ownAgent(t)
	s.SetWanted([]spiffeid.ID{wp})
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	c, err := s.Certificate(ctx, wp)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Leaf.URIs[0].String(); got != wp.String() {
		t.Errorf("leaf URI %s, want %s", got, wp)
	}
	eventually(t, "ready", s.Ready)
	if _, err := s.GetX509BundleForTrustDomain(td); err != nil {
		t.Errorf("bundle: %v", err)
	}
	if _, err := s.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); !errors.Is(err, identity.ErrUnavailable) {
		t.Errorf("bundle of another trust domain: %v, want ErrUnavailable", err)
	}
	if ci := s.Certificates(); len(ci) != 1 || ci[0].ID != wp.String() || ci[0].State != identity.StateValid {
		t.Errorf("Certificates %+v, want one valid %s", ci, wp)
	}
}

func TestOwnSourceRefusesOtherIDs(t *testing.T) {
	_, _, s, wp := ownAgent(t)
	other := wid("apps", "other")
	eventually(t, "an SVID", func() bool { return len(s.Certificates()) > 0 })
	_, err := s.Certificate(t.Context(), other)
	if !errors.Is(err, identity.ErrNotAuthorized) {
		t.Fatalf("Certificate(%s): %v, want ErrNotAuthorized", other, err)
	}
	for _, id := range []spiffeid.ID{wp, other} {
		if !strings.Contains(err.Error(), id.String()) {
			t.Errorf("error %q does not name %s", err, id)
		}
	}
	// A mis-registered entry: the agent issues wp, the process wants other.
	s.SetWanted([]spiffeid.ID{other})
	want := "SPIRE issued " + wp.String() + ", want " + other.String()
	if st := s.Status(); st != want || s.Ready() {
		t.Errorf("Status %q (ready %v), want %q", st, s.Ready(), want)
	}
	ci := s.Certificates()
	if len(ci) != 2 || ci[1].ID != other.String() || ci[1].State != StateNotIssued {
		t.Errorf("Certificates %+v, want %s not issued", ci, other)
	}
}

func TestOwnSourceRotates(t *testing.T) {
	ca, f, s, wp := ownAgent(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	first, err := s.Certificate(ctx, wp)
	if err != nil {
		t.Fatal(err)
	}
	next := ca.issue(t, wp, time.Hour)
	f.setOwn(next)
	eventually(t, "the rotated SVID", func() bool {
		c, err := s.Certificate(ctx, wp)
		return err == nil && c.Leaf.SerialNumber.Cmp(next.leaf.SerialNumber) == 0
	})
	if first.Leaf.SerialNumber.Cmp(next.leaf.SerialNumber) == 0 {
		t.Fatal("rotation reused the serial")
	}
}

func TestOwnSourceExpired(t *testing.T) {
	_, _, s, wp := ownAgent(t)
	eventually(t, "an SVID", s.Ready)
	now := time.Now().Add(2 * time.Hour) // past the fake's 1 h SVID
	s.mu.Lock()
	s.now = func() time.Time { return now }
	s.mu.Unlock()
	if _, err := s.Certificate(t.Context(), wp); !errors.Is(err, identity.ErrUnavailable) {
		t.Errorf("expired SVID: %v, want ErrUnavailable", err)
	}
	if st := s.Status(); !strings.Contains(st, "expired") {
		t.Errorf("Status %q, want expired", st)
	}
}

func TestOwnSourceWithoutAgent(t *testing.T) {
	s, err := NewOwn(OwnConfig{WorkloadSocket: "unix:///nonexistent/agent.sock"})
	if err != nil {
		t.Fatal(err)
	}
	wp := wid("apps", "wp")
	s.SetWanted([]spiffeid.ID{wp})
	if s.Ready() || !strings.Contains(s.Status(), "no SVID from the SPIRE agent yet") {
		t.Errorf("Ready %v Status %q, want not ready without an SVID", s.Ready(), s.Status())
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Certificate(ctx, wp); !errors.Is(err, identity.ErrUnavailable) {
		t.Errorf("Certificate without an SVID: %v, want ErrUnavailable", err)
	}
	if ci := s.Certificates(); len(ci) != 1 || ci[0].State != identity.StatePending {
		t.Errorf("Certificates %+v, want %s pending", ci, wp)
	}
}

func TestNewOwnBadConfig(t *testing.T) {
	for name, cfg := range map[string]OwnConfig{
		"no socket":       {},
		"relative socket": {WorkloadSocket: "unix://run/agent.sock"},
		"tcp socket":      {WorkloadSocket: "tcp://127.0.0.1:1"},
		"bad backoff":     {WorkloadSocket: "unix:///a.sock", MinBackoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		if _, err := NewOwn(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
