package spire

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambitmesh/ambit/identity"
)

const testGrace = 5 * time.Second

// newOffline returns a Source whose subscriptions are driven by the test
// through applySVIDs / streamEnded (no agent, no Run).
func newOffline(tb testing.TB, ids ...spiffeid.ID) *Source {
	tb.Helper()
	s, err := New(Config{WorkloadSocket: "unix:///nonexistent/w.sock", AdminSocket: "unix:///nonexistent/a.sock", RevokeGrace: testGrace})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	s.SetWanted(ids)
	return s
}

func (s *Source) entryFor(id spiffeid.ID) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries[id]
}

func update(svids ...*issued) []*delegatedv1.X509SVIDWithKey {
	out := make([]*delegatedv1.X509SVIDWithKey, len(svids))
	for i, s := range svids {
		out[i] = s.proto()
	}
	return out
}

func stateOf(s *Source, id spiffeid.ID) string {
	for _, ci := range s.Certificates() {
		if ci.ID == id.String() {
			return ci.State
		}
	}
	return "absent"
}

func serialOf(tb testing.TB, s *Source, id spiffeid.ID) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := s.Certificate(ctx, id)
	if err != nil {
		tb.Fatalf("Certificate(%s): %v", id, err)
	}
	return c.Leaf.SerialNumber.Text(16)
}

func certErr(s *Source, id spiffeid.ID) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err := s.Certificate(ctx, id)
	return err
}

// TestRevocationRules drives one subscription through SPIRE's update
// patterns in fake time and checks what Certificate answers.
func TestRevocationRules(t *testing.T) {
	ca := newCA(t)
	a, other := wid("foo", "a"), wid("foo", "other")
	type step struct {
		do    func(s *Source, e *entry, svids map[string]*issued)
		sleep time.Duration
		want  string // serial name of the served SVID, or "notauth", "unavailable"
		state string // optional CertInfo.State
	}
	deliver := func(names ...string) func(*Source, *entry, map[string]*issued) {
		return func(s *Source, e *entry, svids map[string]*issued) {
			var up []*issued
			for _, n := range names {
				up = append(up, svids[n])
			}
			s.applySVIDs(e, update(up...))
		}
	}
	empty := deliver()
	breakStream := func(s *Source, e *entry, _ map[string]*issued) {
		s.streamEnded(e, status.Error(codes.Unavailable, "connection refused"))
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first update empty then SVID", []step{
			{do: empty, state: identity.StatePending},
			{do: deliver("a1"), want: "a1", state: identity.StateValid},
		}},
		{"transient empty update does not revoke", []step{
			{do: deliver("a1"), want: "a1"},
			{do: empty, sleep: testGrace - time.Second, want: "a1", state: StateMissing},
			{do: deliver("a1"), sleep: 2 * testGrace, want: "a1", state: identity.StateValid},
		}},
		{"duplicate update is a no-op", []step{
			{do: deliver("a1"), want: "a1"},
			{do: deliver("a1"), want: "a1"},
			{do: deliver("a1", "other1"), sleep: 2 * testGrace, want: "a1", state: identity.StateValid},
		}},
		{"rotation serves the new serial", []step{
			{do: deliver("a1"), want: "a1"},
			{do: deliver("a2"), want: "a2"},
		}},
		{"other identities in an update are not taken for ours", []step{
			{do: deliver("other1"), state: identity.StatePending},
			{do: deliver("other1"), sleep: testGrace, want: "notauth", state: StateNotIssued},
		}},
		{"omitted for the grace window revokes", []step{
			{do: deliver("a1", "other1"), want: "a1"},
			{do: deliver("other1"), sleep: testGrace - time.Second, want: "a1", state: StateMissing},
			{sleep: time.Second, want: "notauth", state: StateRevoked},
			{do: deliver("a2"), want: "a2", state: identity.StateValid},
		}},
		{"empty updates for the grace window revoke (entry deleted)", []step{
			{do: deliver("a1"), want: "a1"},
			{do: empty, sleep: testGrace, want: "notauth", state: StateRevoked},
		}},
		{"stream break cancels a pending revocation", []step{
			{do: deliver("a1"), want: "a1"},
			{do: empty, sleep: time.Second, want: "a1"},
			{do: breakStream, sleep: 2 * testGrace, want: "a1", state: StateDegraded},
			// A new subscription whose first update is empty does not revoke either.
			{do: empty, sleep: 2 * testGrace, want: "a1", state: identity.StateValid},
			{do: deliver("a2"), want: "a2"},
		}},
		{"never delivered, agent unreachable: still pending", []step{
			{do: breakStream, sleep: 2 * testGrace, state: identity.StatePending},
		}},
		{"expired SVID is unavailable", []step{
			{do: deliver("short"), want: "short"},
			{sleep: 2 * time.Minute, want: "unavailable", state: StateExpired},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				svids := map[string]*issued{
					"a1": ca.issue(t, a, time.Hour), "a2": ca.issue(t, a, time.Hour),
					"other1": ca.issue(t, other, time.Hour), "short": ca.issue(t, a, time.Minute),
				}
				serials := map[string]string{}
				for n, v := range svids {
					serials[v.leaf.SerialNumber.Text(16)] = n
				}
				s := newOffline(t, a)
				e := s.entryFor(a)
				for i, st := range tt.steps {
					if st.do != nil {
						st.do(s, e, svids)
					}
					time.Sleep(st.sleep)
					if st.state != "" {
						if got := stateOf(s, a); got != st.state {
							t.Errorf("step %d: state %q, want %q", i, got, st.state)
						}
					}
					err := certErr(s, a)
					switch st.want {
					case "":
					case "notauth":
						if !errors.Is(err, identity.ErrNotAuthorized) {
							t.Errorf("step %d: Certificate error %v, want ErrNotAuthorized", i, err)
						}
					case "unavailable":
						if !errors.Is(err, identity.ErrUnavailable) {
							t.Errorf("step %d: Certificate error %v, want ErrUnavailable", i, err)
						}
					default:
						if err != nil {
							t.Fatalf("step %d: Certificate: %v", i, err)
						}
						if got := serials[serialOf(t, s, a)]; got != st.want {
							t.Errorf("step %d: serving %s, want %s", i, got, st.want)
						}
					}
				}
			})
		})
	}
}

// TestDuplicateKeepsCertificate: a duplicate update keeps the very same
// *tls.Certificate; a rotation makes a new one and leaves the old untouched.
func TestDuplicateKeepsCertificate(t *testing.T) {
	ca := newCA(t)
	a := wid("foo", "a")
	s := newOffline(t, a)
	e := s.entryFor(a)
	a1, a2 := ca.issue(t, a, time.Hour), ca.issue(t, a, time.Hour)
	s.applySVIDs(e, update(a1))
	c1, err := s.Certificate(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	s.applySVIDs(e, update(a1))
	if c, _ := s.Certificate(context.Background(), a); c != c1 {
		t.Error("duplicate update replaced the certificate")
	}
	s.applySVIDs(e, update(a2))
	c2, _ := s.Certificate(context.Background(), a)
	if c2 == c1 || c2.Leaf.SerialNumber.Cmp(a2.leaf.SerialNumber) != 0 {
		t.Error("rotation did not replace the certificate")
	}
	if c1.Leaf.SerialNumber.Cmp(a1.leaf.SerialNumber) != 0 || string(c1.Certificate[0]) != string(a1.chain[0]) {
		t.Error("rotation mutated the previous certificate")
	}
}

// TestWeakSVIDIgnored: an SVID that peers would refuse (weak key, or no client
// authentication) is not presented; the held one stays and the id does not
// count as missing.
func TestWeakSVIDIgnored(t *testing.T) {
	ca := newCA(t)
	a := wid("foo", "a")
	weakKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serverOnly := func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }
	for _, tt := range []struct {
		name string
		bad  *issued
	}{
		{"rsa1024", ca.issueWith(t, a, time.Hour, weakKey, nil)},
		{"server auth only", ca.issueWith(t, a, time.Hour, p256, serverOnly)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newOffline(t, a)
			e := s.entryFor(a)
			s.applySVIDs(e, update(tt.bad))
			if err := certErr(s, a); !errors.Is(err, identity.ErrUnavailable) {
				t.Fatalf("Certificate after only a refused SVID: %v, want ErrUnavailable", err)
			}
			good := ca.issue(t, a, time.Hour)
			s.applySVIDs(e, update(good))
			want := serialOf(t, s, a)
			s.applySVIDs(e, update(tt.bad))
			if got := serialOf(t, s, a); got != want {
				t.Fatalf("serial %s after a refused SVID, want the held %s", got, want)
			}
			if e.missingSince != (time.Time{}) {
				t.Fatal("a refused SVID counted as missing")
			}
		})
	}
}

// TestCertificateWaits: a wanted id not yet delivered is waited for; the wait
// ends with the SVID, with ErrNotAuthorized once SPIRE has not issued it for
// the grace window, or with ErrUnavailable when the id is released or the
// context ends.
func TestCertificateWaits(t *testing.T) {
	ca := newCA(t)
	a := wid("foo", "a")
	tests := []struct {
		name string
		act  func(s *Source, e *entry)
		want error
	}{
		{"delivered", func(s *Source, e *entry) { s.applySVIDs(e, update(ca.issue(t, a, time.Hour))) }, nil},
		{"not issued", func(s *Source, e *entry) { s.applySVIDs(e, nil) }, identity.ErrNotAuthorized},
		{"released", func(s *Source, e *entry) { s.SetWanted(nil) }, identity.ErrUnavailable},
		{"closed", func(s *Source, e *entry) { s.Close() }, identity.ErrUnavailable},
		{"context ends", func(s *Source, e *entry) {}, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := newOffline(t, a)
				e := s.entryFor(a)
				done := make(chan error, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					_, err := s.Certificate(ctx, a)
					done <- err
				}()
				synctest.Wait()
				select {
				case err := <-done:
					t.Fatalf("Certificate returned before anything happened: %v", err)
				default:
				}
				tt.act(s, e)
				err := <-done
				if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
					t.Errorf("Certificate: %v, want %v", err, tt.want)
				}
			})
		})
	}
}

func TestCertificateErrors(t *testing.T) {
	s := newOffline(t, wid("foo", "a"), spiffeid.RequireFromString("spiffe://other.td/ns/foo/sa/a"),
		spiffeid.RequireFromString("spiffe://cluster.local/not/a/workload"))
	tests := []struct {
		id   string
		want error
	}{
		{"spiffe://cluster.local/ns/foo/sa/unwanted", identity.ErrUnavailable},
		{"spiffe://other.td/ns/foo/sa/a", identity.ErrNotAuthorized},
		{"spiffe://cluster.local/not/a/workload", identity.ErrNotAuthorized},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if err := certErr(s, spiffeid.RequireFromString(tt.id)); !errors.Is(err, tt.want) {
				t.Errorf("Certificate: %v, want %v", err, tt.want)
			}
		})
	}
	if st := stateOf(s, spiffeid.RequireFromString("spiffe://other.td/ns/foo/sa/a")); st != StateInvalidID {
		t.Errorf("state of a foreign id %q, want %q", st, StateInvalidID)
	}
}

func TestNewConfig(t *testing.T) {
	ok := Config{WorkloadSocket: "unix:///run/spire/w.sock", AdminSocket: "/run/spire-admin/a.sock"}
	tests := []struct {
		name   string
		mutate func(*Config)
		errSub string
	}{
		{"ok", func(*Config) {}, ""},
		{"no workload socket", func(c *Config) { c.WorkloadSocket = "" }, "workload socket: not set"},
		{"relative admin socket", func(c *Config) { c.AdminSocket = "unix://run/a.sock" }, "admin socket"},
		{"tcp admin socket", func(c *Config) { c.AdminSocket = "tcp://127.0.0.1:1" }, "admin socket"},
		{"bad template", func(c *Config) { c.SelectorTemplates = []string{"k8s"} }, `selector template "k8s"`},
		{"empty template value", func(c *Config) { c.SelectorTemplates = []string{"k8s:"} }, `selector template "k8s:"`},
		{"backoff inverted", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Second, time.Millisecond }, "backoff bounds"},
		{"negative grace", func(c *Config) { c.RevokeGrace = -1 }, "revoke grace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mutate(&cfg)
			s, err := New(cfg)
			if tt.errSub == "" {
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errSub) {
				t.Fatalf("New: %v, want error containing %q", err, tt.errSub)
			}
		})
	}
}

func TestSelectors(t *testing.T) {
	tests := []struct {
		name      string
		templates []string
		id        string
		want      []string
	}{
		{"default", nil, "spiffe://cluster.local/ns/foo/sa/bar", []string{"k8s:ns:foo", "k8s:sa:bar"}},
		{"custom", []string{"k8s:pod-label:app:x", "unix:uid:0", "k8s:ns:{ns}-{sa}"}, "spiffe://cluster.local/ns/foo/sa/bar",
			[]string{"k8s:pod-label:app:x", "unix:uid:0", "k8s:ns:foo-bar"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{WorkloadSocket: "/w", AdminSocket: "/a", SelectorTemplates: tt.templates})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got, err := s.selectorsFor(spiffeid.RequireFromString(tt.id))
			if err != nil {
				t.Fatal(err)
			}
			var gs []string
			for _, g := range got {
				gs = append(gs, g.Type+":"+g.Value)
			}
			if strings.Join(gs, " ") != strings.Join(tt.want, " ") {
				t.Errorf("selectors %v, want %v", gs, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	b := &backoff{min: 100 * time.Millisecond, max: time.Second}
	prev := time.Duration(0)
	for i := range 8 {
		d := b.after(errors.New("down"))
		if d <= 0 || d > time.Second {
			t.Fatalf("attempt %d: backoff %v out of (0, 1s]", i, d)
		}
		if i < 3 && d < prev {
			t.Errorf("attempt %d: backoff %v shrank from %v", i, d, prev)
		}
		prev = d
	}
	if d := b.after(errors.New("down")); d < 800*time.Millisecond {
		t.Errorf("backoff after many failures %v, want near the 1s cap", d)
	}
	b.reset()
	if d := b.after(errors.New("down")); d > 100*time.Millisecond {
		t.Errorf("backoff after reset %v, want <= min", d)
	}
	notIssued := status.Error(codes.PermissionDenied, "no identity issued")
	for i := range notIssuedRetryMax {
		if d := b.after(notIssued); d != notIssuedRetry {
			t.Fatalf("not-issued retry %d: %v, want %v", i, d, notIssuedRetry)
		}
	}
	if d := b.after(notIssued); d == notIssuedRetry {
		t.Errorf("not-issued retries never fall back to the exponential backoff")
	}
}
