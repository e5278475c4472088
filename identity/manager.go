package identity

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	defaultMinBackoff = time.Second
	defaultMaxBackoff = 5 * time.Minute
	// issueTimeout bounds one Issue call so a hung CA cannot stall rotation.
	issueTimeout = 30 * time.Second
)

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Issuer      Issuer
	TrustDomain spiffeid.TrustDomain // default cluster.local
	// Roots are the initial trust roots (e.g. from a root file); replaced by the
	// roots returned with each issued certificate.
	Roots      []*x509.Certificate
	Logger     *slog.Logger
	Now        func() time.Time // optional, for tests
	MinBackoff time.Duration    // default 1s
	MaxBackoff time.Duration    // default 5m
}

// Manager implements Source on top of an Issuer. Keys are ECDSA P-256, made
// locally; certificates are cached per id and renewed at half-life (±5% jitter);
// failed attempts are retried with exponential backoff while the previous
// certificate keeps being served until it expires. A tls.Certificate, once
// returned, is never mutated, so established connections keep theirs and new
// handshakes get the newest.
//
// Wanted ids (SetWanted) are fetched at once and rotated by Run. An id asked
// for through Certificate but not wanted is fetched on demand, served until it
// expires, and not renewed.
type Manager struct {
	cfg    ManagerConfig
	log    *slog.Logger
	now    func() time.Time
	ctx    context.Context // ends on Close; parent of every Issue call
	cancel context.CancelFunc
	kick   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	closed  bool
	entries map[spiffeid.ID]*entry
	bundle  *x509bundle.Bundle // replaced, never mutated
}

type entry struct {
	id       spiffeid.ID
	wanted   bool
	cert     *tls.Certificate
	leaf     *x509.Certificate
	renewAt  time.Time // next renewal or retry; zero = now
	failures int
	lastErr  error
	op       *fetchOp // in-flight fetch, nil if none
}

type fetchOp struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func (e *entry) validAt(now time.Time) bool {
	return e.leaf != nil && !now.Before(e.leaf.NotBefore) && now.Before(e.leaf.NotAfter)
}

// NewManager returns a Manager; call Run to keep wanted certificates rotated.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.Issuer == nil {
		return nil, errors.New("new certificate manager: no issuer")
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = defaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("new certificate manager: backoff bounds %v..%v invalid", cfg.MinBackoff, cfg.MaxBackoff)
	}
	for i, r := range cfg.Roots {
		if r == nil || !r.IsCA {
			return nil, fmt.Errorf("new certificate manager: root %d is not a CA certificate", i)
		}
	}
	m := &Manager{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		kick:    make(chan struct{}, 1),
		entries: make(map[spiffeid.ID]*entry),
		bundle:  x509bundle.FromX509Authorities(cfg.TrustDomain, cfg.Roots),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

// Run renews wanted certificates and drops expired unwanted ones until ctx
// ends or the Manager is closed; it returns nil then.
func (m *Manager) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil
		}
		now := m.now()
		next := m.startDueLocked(now)
		m.mu.Unlock()

		var wake <-chan time.Time
		if !next.IsZero() {
			timer.Reset(next.Sub(now))
			wake = timer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.ctx.Done():
			return nil
		case <-m.kick:
		case <-wake:
		}
	}
}

// Close stops rotation, cancels in-flight requests and waits for them. Idempotent.
func (m *Manager) Close() error {
	m.once.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		m.cancel()
		m.wg.Wait()
	})
	return nil
}

// Certificate implements Source.
func (m *Manager) Certificate(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("certificate for %s: manager closed: %w", id, ErrUnavailable)
	}
	now := m.now()
	e := m.entries[id]
	if e == nil {
		e = &entry{id: id}
		m.entries[id] = e
	}
	if e.validAt(now) {
		c := e.cert
		m.mu.Unlock()
		return c, nil
	}
	op := e.op
	if op == nil {
		if e.lastErr != nil && now.Before(e.renewAt) {
			// Backing off: answer at once rather than make every handshake hit the CA.
			err := e.lastErr
			m.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: %w", id, err)
		}
		op = m.startFetchLocked(e)
	}
	m.mu.Unlock()
	m.poke()

	select {
	case <-op.done:
		if op.err != nil {
			return nil, fmt.Errorf("certificate for %s: %w", id, op.err)
		}
		return op.cert, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("certificate for %s: %w: %w", id, ErrUnavailable, ctx.Err())
	}
}

// GetX509BundleForTrustDomain implements Source and x509bundle.Source.
func (m *Manager) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != m.cfg.TrustDomain {
		return nil, fmt.Errorf("no trust bundle for trust domain %q (serving %q)", td, m.cfg.TrustDomain)
	}
	m.mu.Lock()
	b := m.bundle
	m.mu.Unlock()
	if b.Empty() {
		return nil, fmt.Errorf("trust bundle for %q has no roots yet: %w", td, ErrUnavailable)
	}
	return b, nil
}

// SetWanted implements Source. Ids not in ids are dropped at once (callers
// waiting for them still get the result of an in-flight fetch).
func (m *Manager) SetWanted(ids []spiffeid.ID) {
	want := make(map[spiffeid.ID]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	for id := range m.entries {
		if !want[id] {
			delete(m.entries, id)
		}
	}
	for id := range want {
		e := m.entries[id]
		if e == nil {
			e = &entry{id: id}
			m.entries[id] = e
		}
		e.wanted = true
	}
	m.startDueLocked(m.now())
	m.mu.Unlock()
	m.poke()
}

// Ready implements Source: every wanted id has a valid certificate (true when nothing is wanted).
func (m *Manager) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, e := range m.entries {
		if e.wanted && !e.validAt(now) {
			return false
		}
	}
	return true
}

// Certificates implements Source, sorted by id.
func (m *Manager) Certificates() []CertInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	out := make([]CertInfo, 0, len(m.entries))
	for _, e := range m.entries {
		ci := CertInfo{ID: e.id.String()}
		if e.leaf != nil {
			ci.Serial = e.leaf.SerialNumber.Text(16)
			ci.NotBefore = e.leaf.NotBefore
			ci.NotAfter = e.leaf.NotAfter
		}
		switch {
		case e.validAt(now) && e.op == nil && e.lastErr == nil && (!e.wanted || now.Before(e.renewAt)):
			ci.State = StateValid
		case e.validAt(now):
			ci.State = StateRenewing
		case e.op == nil && e.lastErr != nil:
			ci.State = StateFailed
		default:
			ci.State = StatePending
		}
		out = append(out, ci)
	}
	slices.SortFunc(out, func(a, b CertInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// startDueLocked starts due fetches, forgets stale unwanted entries, and
// returns when something is next due (zero if nothing).
func (m *Manager) startDueLocked(now time.Time) time.Time {
	var next time.Time
	due := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for id, e := range m.entries {
		if e.op != nil {
			continue
		}
		if !e.wanted {
			switch {
			case e.validAt(now):
				due(e.leaf.NotAfter)
			case e.lastErr != nil && now.Before(e.renewAt):
				due(e.renewAt)
			default:
				delete(m.entries, id)
			}
			continue
		}
		if !now.Before(e.renewAt) {
			m.startFetchLocked(e)
			continue
		}
		due(e.renewAt)
	}
	return next
}

func (m *Manager) startFetchLocked(e *entry) *fetchOp {
	op := &fetchOp{done: make(chan struct{})}
	e.op = op
	m.wg.Add(1)
	go m.fetch(e, op)
	return op
}

func (m *Manager) fetch(e *entry, op *fetchOp) {
	defer m.wg.Done()
	cert, roots, err := m.issue(e.id)

	m.mu.Lock()
	now := m.now()
	e.op = nil
	if err != nil {
		e.failures++
		e.lastErr = err
		wait := m.backoff(e.failures)
		e.renewAt = now.Add(wait)
		m.log.Warn("certificate request failed", "id", e.id.String(), "attempt", e.failures, "retry_in", wait, "error", err)
	} else {
		e.cert, e.leaf = cert, cert.Leaf
		e.failures = 0
		e.lastErr = nil
		e.renewAt = renewTime(cert.Leaf)
		if !e.renewAt.After(now) {
			// A certificate already past its renewal time must not cause a tight re-issue loop.
			e.renewAt = now.Add(m.cfg.MinBackoff)
		}
		if len(roots) > 0 {
			m.bundle = x509bundle.FromX509Authorities(m.cfg.TrustDomain, roots)
		}
		m.log.Info("certificate issued", "id", e.id.String(), "serial", cert.Leaf.SerialNumber.Text(16),
			"not_after", cert.Leaf.NotAfter, "renew_at", e.renewAt)
	}
	op.cert, op.err = cert, err
	close(op.done)
	m.mu.Unlock()
	m.poke()
}

// issue makes a key and CSR, asks the issuer, and checks what comes back.
// Errors wrap ErrNotAuthorized or ErrUnavailable.
func (m *Manager) issue(id spiffeid.ID) (*tls.Certificate, []*x509.Certificate, error) {
	if !id.MemberOf(m.cfg.TrustDomain) {
		return nil, nil, fmt.Errorf("trust domain of %s is not %q: %w", id, m.cfg.TrustDomain, ErrNotAuthorized)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w: %w", ErrUnavailable, err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create csr: %w: %w", ErrUnavailable, err)
	}
	ctx, cancel := context.WithTimeout(m.ctx, issueTimeout)
	chain, roots, err := m.cfg.Issuer.Issue(ctx, id, csr)
	cancel()
	if err != nil {
		if errors.Is(err, ErrNotAuthorized) || errors.Is(err, ErrUnavailable) {
			return nil, nil, fmt.Errorf("issue: %w", err)
		}
		return nil, nil, fmt.Errorf("issue: %w: %w", ErrUnavailable, err)
	}
	cert, err := m.checkIssued(id, key.Public(), chain, roots)
	if err != nil {
		return nil, nil, fmt.Errorf("issued certificate for %s: %w: %w", id, ErrUnavailable, err)
	}
	cert.PrivateKey = key
	return cert, roots, nil
}

func (m *Manager) checkIssued(id spiffeid.ID, pub crypto.PublicKey, chain, roots []*x509.Certificate) (*tls.Certificate, error) {
	if len(chain) == 0 || slices.Contains(chain, nil) {
		return nil, errors.New("empty or nil certificate in chain")
	}
	leaf := chain[0]
	if !pub.(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
		return nil, errors.New("leaf public key does not match the requested key")
	}
	var bundle *x509bundle.Bundle
	if len(roots) > 0 {
		bundle = x509bundle.FromX509Authorities(m.cfg.TrustDomain, roots)
	} else {
		m.mu.Lock()
		bundle = m.bundle
		m.mu.Unlock()
	}
	got, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(m.now()))
	if err != nil {
		return nil, err
	}
	if got != id {
		return nil, fmt.Errorf("leaf identity is %s", got)
	}
	if err := CheckOwnChain(chain); err != nil {
		return nil, err
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	return &tls.Certificate{Certificate: der, Leaf: leaf}, nil
}

// backoff returns the wait before attempt n+1 after n consecutive failures:
// MinBackoff doubled per failure up to MaxBackoff, minus up to 10% jitter.
func (m *Manager) backoff(failures int) time.Duration {
	d := m.cfg.MinBackoff
	for i := 1; i < failures && d < m.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, m.cfg.MaxBackoff)
	if j := int64(d / 10); j > 0 {
		d -= time.Duration(mrand.Int64N(j + 1))
	}
	return d
}

// renewTime is the middle of the validity period, ±5% of the lifetime so that
// many certificates issued together are not renewed together.
func renewTime(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	at := leaf.NotBefore.Add(life * 45 / 100)
	if j := int64(life / 10); j > 0 {
		at = at.Add(time.Duration(mrand.Int64N(j + 1)))
	}
	return at
}
