package identity_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

type issueCall struct {
	id spiffeid.ID
	at time.Time
}

// fakeIssuer signs with a real CA and can fail, refuse, block, or misbehave.
type fakeIssuer struct {
	ca *ca.CA

	mu      sync.Mutex
	calls   []issueCall
	fail    error
	refuse  map[spiffeid.ID]bool
	gate    chan struct{}
	wrongBy *testRoot // sign with this root instead, returning no roots
	narrow  *testRoot // sign with this root, returned as the root, for server auth only
}

func (f *fakeIssuer) Issue(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, []*x509.Certificate, error) {
	f.mu.Lock()
	f.calls = append(f.calls, issueCall{id, time.Now()})
	fail, gate, refuse, wrong, narrow := f.fail, f.gate, f.refuse[id], f.wrongBy, f.narrow
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	switch {
	case fail != nil:
		return nil, nil, fail
	case refuse:
		return nil, nil, fmt.Errorf("fake: %w", identity.ErrNotAuthorized)
	case wrong != nil || narrow != nil:
		csr, err := x509.ParseCertificateRequest(csrDER)
		if err != nil {
			return nil, nil, err
		}
		by, roots := wrong, []*x509.Certificate(nil)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), URIs: csr.URIs}
		if narrow != nil {
			by, roots = narrow, []*x509.Certificate{narrow.cert}
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, by.cert, csr.PublicKey, by.key)
		if err != nil {
			return nil, nil, err
		}
		leaf, err := x509.ParseCertificate(der)
		return []*x509.Certificate{leaf}, roots, err
	}
	chain, err := f.ca.Sign(id, csrDER)
	if err != nil {
		return nil, nil, err
	}
	return chain, f.ca.Roots(), nil
}

func (f *fakeIssuer) set(fn func(f *fakeIssuer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeIssuer) callsFor(id spiffeid.ID) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Time
	for _, c := range f.calls {
		if c.id == id {
			out = append(out, c.at)
		}
	}
	return out
}

// startManager makes a CA with leafTTL and a running Manager on top of it,
// inside the calling synctest bubble; stop ends both.
func startManager(t *testing.T, leafTTL time.Duration, cfg identity.ManagerConfig) (m *identity.Manager, iss *fakeIssuer, stop func()) {
	t.Helper()
	authority, err := ca.New(ca.Config{StateDir: t.TempDir(), LeafTTL: leafTTL})
	if err != nil {
		t.Fatal(err)
	}
	iss = &fakeIssuer{ca: authority, refuse: map[spiffeid.ID]bool{}}
	cfg.Issuer = iss
	m, err = identity.NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	return m, iss, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		m.Close()
	}
}

func mustCert(t *testing.T, m *identity.Manager, id spiffeid.ID) *x509.Certificate {
	t.Helper()
	c, err := m.Certificate(context.Background(), id)
	if err != nil {
		t.Fatalf("Certificate(%s): %v", id, err)
	}
	return c.Leaf
}

func stateOf(m *identity.Manager, id spiffeid.ID) string {
	for _, ci := range m.Certificates() {
		if ci.ID == id.String() {
			return ci.State
		}
	}
	return "absent"
}

func TestManagerRenewsAtHalfLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, iss, stop := startManager(t, 24*time.Hour, identity.ManagerConfig{})
		defer stop()

		m.SetWanted([]spiffeid.ID{idA})
		synctest.Wait()
		if !m.Ready() {
			t.Fatal("not ready after the first issue")
		}
		first, err := m.Certificate(context.Background(), idA)
		if err != nil {
			t.Fatal(err)
		}
		firstSerial := first.Leaf.SerialNumber.String()
		life := first.Leaf.NotAfter.Sub(first.Leaf.NotBefore)
		earliest := first.Leaf.NotBefore.Add(life * 45 / 100)
		latest := first.Leaf.NotBefore.Add(life * 55 / 100)

		time.Sleep(time.Until(earliest) - time.Second)
		synctest.Wait()
		if n := len(iss.callsFor(idA)); n != 1 {
			t.Fatalf("%d issues before 45%% of the lifetime, want 1", n)
		}
		if got := mustCert(t, m, idA); got.SerialNumber.String() != firstSerial {
			t.Fatal("certificate changed before renewal")
		}

		time.Sleep(time.Until(latest) + time.Second)
		synctest.Wait()
		calls := iss.callsFor(idA)
		if len(calls) != 2 {
			t.Fatalf("%d issues after 55%% of the lifetime, want 2", len(calls))
		}
		if calls[1].Before(earliest) || calls[1].After(latest) {
			t.Fatalf("renewed at %v, want within [%v, %v]", calls[1], earliest, latest)
		}
		second := mustCert(t, m, idA)
		if second.SerialNumber.String() == firstSerial {
			t.Fatal("certificate not replaced after renewal")
		}
		// A certificate already handed out (e.g. to a live connection) is untouched.
		if first.Leaf.SerialNumber.String() != firstSerial {
			t.Fatal("previously returned certificate was mutated")
		}
		if got := stateOf(m, idA); got != identity.StateValid {
			t.Fatalf("state %q, want %q", got, identity.StateValid)
		}

		// And it keeps rotating.
		time.Sleep(life)
		synctest.Wait()
		if n := len(iss.callsFor(idA)); n != 4 && n != 3 {
			t.Fatalf("%d issues after another lifetime, want 3 or 4", n)
		}
		if !m.Ready() {
			t.Fatal("not ready while rotating")
		}
	})
}

func TestManagerBackoffKeepsOldCertificate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const minB, maxB = time.Second, time.Minute
		m, iss, stop := startManager(t, time.Hour, identity.ManagerConfig{MinBackoff: minB, MaxBackoff: maxB})
		defer stop()

		m.SetWanted([]spiffeid.ID{idA})
		synctest.Wait()
		old := mustCert(t, m, idA)
		iss.set(func(f *fakeIssuer) { f.fail = errors.New("ca down") })

		// Until it expires, the old certificate is served while renewal retries.
		time.Sleep(time.Until(old.NotAfter) - time.Second)
		synctest.Wait()
		if got := mustCert(t, m, idA); got.SerialNumber.Cmp(old.SerialNumber) != 0 {
			t.Fatal("old certificate not served during failed renewal")
		}
		if !m.Ready() {
			t.Fatal("not ready while the old certificate is valid")
		}
		if got := stateOf(m, idA); got != identity.StateRenewing {
			t.Fatalf("state %q, want %q", got, identity.StateRenewing)
		}
		calls := iss.callsFor(idA)[1:] // the failed renewals
		if len(calls) < 10 {
			t.Fatalf("only %d renewal attempts", len(calls))
		}
		want := minB
		for i := 1; i < len(calls); i++ {
			if i > 1 {
				want = min(want*2, maxB)
			}
			got := calls[i].Sub(calls[i-1])
			if got > want || got < want*9/10 {
				t.Fatalf("wait before attempt %d = %v, want %v minus at most 10%%", i+1, got, want)
			}
		}

		// Once expired, it is no longer served.
		time.Sleep(2 * time.Second)
		synctest.Wait()
		_, err := m.Certificate(context.Background(), idA)
		if !errors.Is(err, identity.ErrUnavailable) || !strings.Contains(err.Error(), "ca down") {
			t.Fatalf("Certificate after expiry: %v, want ErrUnavailable naming the cause", err)
		}
		if m.Ready() {
			t.Fatal("ready with an expired certificate")
		}
		if got := stateOf(m, idA); got != identity.StateFailed {
			t.Fatalf("state %q, want %q", got, identity.StateFailed)
		}

		// Recovery within one maximal backoff.
		iss.set(func(f *fakeIssuer) { f.fail = nil })
		time.Sleep(maxB)
		synctest.Wait()
		if !m.Ready() {
			t.Fatal("not ready after the issuer recovered")
		}
		if got := mustCert(t, m, idA); got.SerialNumber.Cmp(old.SerialNumber) == 0 {
			t.Fatal("still the old certificate")
		}
	})
}

func TestManagerReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, iss, stop := startManager(t, time.Hour, identity.ManagerConfig{})
		defer stop()
		if !m.Ready() {
			t.Fatal("not ready with nothing wanted")
		}
		gate := make(chan struct{})
		iss.set(func(f *fakeIssuer) { f.gate = gate })
		m.SetWanted([]spiffeid.ID{idA})
		synctest.Wait()
		if m.Ready() {
			t.Fatal("ready while the certificate is being fetched")
		}
		if got := stateOf(m, idA); got != identity.StatePending {
			t.Fatalf("state %q, want %q", got, identity.StatePending)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := m.Certificate(ctx, idA)
		cancel()
		if !errors.Is(err, identity.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Certificate while pending: %v, want ErrUnavailable and DeadlineExceeded", err)
		}
		// A waiting caller gets the certificate when it arrives.
		got := make(chan error, 1)
		go func() {
			_, err := m.Certificate(context.Background(), idA)
			got <- err
		}()
		synctest.Wait()
		iss.set(func(f *fakeIssuer) { f.gate = nil })
		close(gate)
		if err := <-got; err != nil {
			t.Fatalf("waiting Certificate: %v", err)
		}
		synctest.Wait()
		if !m.Ready() {
			t.Fatal("not ready after the fetch")
		}

		// A refused identity keeps the node not ready and says why.
		iss.set(func(f *fakeIssuer) { f.refuse[idB] = true })
		m.SetWanted([]spiffeid.ID{idA, idB})
		synctest.Wait()
		if m.Ready() {
			t.Fatal("ready although one wanted identity was refused")
		}
		if _, err := m.Certificate(context.Background(), idB); !errors.Is(err, identity.ErrNotAuthorized) {
			t.Fatalf("Certificate(refused): %v, want ErrNotAuthorized", err)
		}
		if _, err := m.Certificate(context.Background(), idOther); !errors.Is(err, identity.ErrNotAuthorized) {
			t.Fatalf("Certificate(other trust domain): %v, want ErrNotAuthorized", err)
		}
	})
}

func TestManagerSetWantedDropsOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, iss, stop := startManager(t, time.Hour, identity.ManagerConfig{})
		defer stop()
		ids := func() []string {
			var out []string
			for _, ci := range m.Certificates() {
				out = append(out, ci.ID)
			}
			return out
		}
		m.SetWanted([]spiffeid.ID{idA, idB})
		synctest.Wait()
		if got := ids(); len(got) != 2 {
			t.Fatalf("held %v, want a and b", got)
		}
		m.SetWanted([]spiffeid.ID{idB})
		if got := ids(); len(got) != 1 || got[0] != idB.String() {
			t.Fatalf("held %v after SetWanted(b), want only b", got)
		}
		for _, ci := range m.Certificates() {
			if ci.Serial == "" || ci.NotAfter.IsZero() || ci.State != identity.StateValid {
				t.Fatalf("incomplete info %+v", ci)
			}
		}

		// An id asked for but not wanted is served until it expires, not renewed, then forgotten.
		c := mustCert(t, m, idC)
		if got := ids(); len(got) != 2 {
			t.Fatalf("held %v, want b and c", got)
		}
		time.Sleep(time.Until(c.NotAfter) + time.Second)
		synctest.Wait()
		if got := ids(); len(got) != 1 || got[0] != idB.String() {
			t.Fatalf("held %v after c expired, want only b", got)
		}
		if n := len(iss.callsFor(idC)); n != 1 {
			t.Fatalf("unwanted id issued %d times, want 1", n)
		}
		if n := len(iss.callsFor(idB)); n < 2 {
			t.Fatalf("wanted id issued %d times in a lifetime, want renewal", n)
		}
		if !m.Ready() {
			t.Fatal("not ready")
		}
	})
}

func TestManagerRejectsBadIssuedCertificates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, iss, stop := startManager(t, time.Hour, identity.ManagerConfig{})
		defer stop()
		if _, err := m.GetX509BundleForTrustDomain(meshTD); !errors.Is(err, identity.ErrUnavailable) {
			t.Fatalf("bundle before any root: %v, want ErrUnavailable", err)
		}
		iss.set(func(f *fakeIssuer) { f.wrongBy = newTestRoot(t) })
		_, err := m.Certificate(context.Background(), idA)
		if !errors.Is(err, identity.ErrUnavailable) || !strings.Contains(err.Error(), "verify") {
			t.Fatalf("certificate from an untrusted root: %v, want ErrUnavailable naming verification", err)
		}

		// Peers would refuse it as a client certificate.
		iss.set(func(f *fakeIssuer) { f.wrongBy, f.narrow = nil, newTestRoot(t) })
		time.Sleep(time.Minute)
		_, err = m.Certificate(context.Background(), idA)
		if !errors.Is(err, identity.ErrUnavailable) || !strings.Contains(err.Error(), "extended key usage does not allow client authentication") {
			t.Fatalf("certificate for server auth only: %v, want ErrUnavailable naming the usage", err)
		}

		iss.set(func(f *fakeIssuer) { f.narrow = nil })
		time.Sleep(time.Minute)
		mustCert(t, m, idA)
		b, err := m.GetX509BundleForTrustDomain(meshTD)
		if err != nil || !b.HasX509Authority(iss.ca.Roots()[0]) {
			t.Fatalf("bundle after issue: %v, want the CA root", err)
		}
		if _, err := m.GetX509BundleForTrustDomain(otherTD); err == nil {
			t.Fatal("bundle for a foreign trust domain")
		}
	})
}

func TestManagerClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, _, stop := startManager(t, time.Hour, identity.ManagerConfig{})
		mustCert(t, m, idA)
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := m.Certificate(context.Background(), idA); !errors.Is(err, identity.ErrUnavailable) {
			t.Fatalf("Certificate after Close: %v, want ErrUnavailable", err)
		}
		stop()
	})
}

func TestNewManagerErrors(t *testing.T) {
	if _, err := identity.NewManager(identity.ManagerConfig{}); err == nil {
		t.Fatal("NewManager without issuer succeeded")
	}
	if _, err := identity.NewManager(identity.ManagerConfig{Issuer: &fakeIssuer{}, MinBackoff: time.Minute, MaxBackoff: time.Second}); err == nil {
		t.Fatal("NewManager with min > max backoff succeeded")
	}
}
