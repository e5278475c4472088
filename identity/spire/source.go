// Package spire implements identity.Source on top of a local SPIRE agent:
// the tunnel's own SVID and the trust bundles come from the SPIFFE Workload
// API, the SVIDs of the pods the node serves from the agent's Delegated
// Identity API (admin socket), one subscription per wanted identity with the
// selectors derived from its namespace and service account.
//
// Revocation. SPIRE never says "revoked"; it only stops including an SVID in
// the updates of a subscription. Updates are not trustworthy one by one: the
// first update of a subscription is often empty, a new entry is announced by
// an empty update first, and after an agent restart the SVIDs come back only
// once the agent has synced. So no single update revokes anything. A held SVID
// is revoked when the SAME subscription that delivered it then omits it
// (empty update or not) and keeps omitting it for Config.RevokeGrace (default
// 5 s) while that subscription stays connected. A subscription that breaks
// cancels the pending revocation: during an outage held SVIDs are served
// until they expire, and after a reconnect an SVID delivered by an earlier
// subscription is kept until the new one delivers it again or it expires.
// An id never delivered is reported as not issued (ErrNotAuthorized) once its
// connected subscription has gone RevokeGrace without delivering it; it stays
// subscribed and becomes valid as soon as SPIRE issues it.
package spire

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/ambitmesh/ambit/identity"
)

const (
	defaultMinBackoff  = 200 * time.Millisecond
	defaultMaxBackoff  = 30 * time.Second
	defaultRevokeGrace = 5 * time.Second
)

// DefaultSelectorTemplates are the selectors sent for an identity
// spiffe://<td>/ns/<ns>/sa/<sa> when Config.SelectorTemplates is empty.
var DefaultSelectorTemplates = []string{"k8s:ns:{ns}", "k8s:sa:{sa}"}

// Certificate states reported in identity.CertInfo.State besides identity.StateValid
// and identity.StatePending.
const (
	StateDegraded  = "degraded: agent unreachable" // valid SVID held, its subscription is down
	StateMissing   = "valid: missing from SPIRE updates"
	StateRevoked   = "failed: revoked by SPIRE"    // delivered, then omitted for the grace window
	StateNotIssued = "failed: not issued by SPIRE" // never delivered on a connected subscription
	StateExpired   = "failed: expired"
	StateInvalidID = "failed: no selectors for this identity"
)

// Config configures a Source.
type Config struct {
	// WorkloadSocket is the agent's Workload API, "unix:///abs/path": the
	// tunnel's own SVID and the trust bundles.
	WorkloadSocket string
	// AdminSocket is the agent's admin socket, "unix:///abs/path", serving the
	// Delegated Identity API. The tunnel's own SPIFFE ID must be listed in the
	// agent's authorized_delegates.
	AdminSocket string
	// TrustDomain of the served identities; default identity.DefaultTrustDomain.
	TrustDomain spiffeid.TrustDomain
	// SelectorTemplates derive the selectors sent for a workload identity
	// ("type:value"); "{ns}" and "{sa}" are replaced. Default DefaultSelectorTemplates.
	SelectorTemplates []string
	Logger            *slog.Logger
	// MinBackoff and MaxBackoff bound the reconnect backoff (default 200ms / 30s).
	MinBackoff, MaxBackoff time.Duration
	// RevokeGrace is how long a connected subscription must omit an identity
	// before it counts as revoked / not issued (default 5s); see the package doc.
	RevokeGrace time.Duration
	Now         func() time.Time // optional, for tests
}

// Source is an identity.Source backed by a SPIRE agent. Create it with New,
// maintain the agent streams with Run, release it with Close.
type Source struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	templates []selectorTemplate

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	runWG  sync.WaitGroup // Run calls in progress
	once   sync.Once

	mu      sync.Mutex
	closed  bool
	running *runState // nil unless Run is active
	entries map[spiffeid.ID]*entry

	own       ownState
	wlHealth  health // Workload API stream
	bunHealth health // delegated bundle stream

	// Bundles per trust domain from each stream; the newer update wins.
	wlBundles, delBundles     map[spiffeid.TrustDomain]*x509bundle.Bundle
	wlBundlesAt, delBundlesAt time.Time
}

// health is the state of one stream to the agent.
type health struct {
	up        bool      // the current stream has delivered at least one message
	downSince time.Time // first failure of the current series; zero while up
	err       error     // last failure
}

func (h *health) setUp() { h.up, h.downSince, h.err = true, time.Time{}, nil }

func (h *health) setDown(now time.Time, err error) {
	if h.downSince.IsZero() {
		h.downSince = now
	}
	h.up, h.err = false, err
}

type ownState struct {
	svid *x509svid.SVID
	cert *tls.Certificate
}

// entry is one wanted identity and its subscription.
type entry struct {
	id      spiffeid.ID
	sels    []*types.Selector
	badErr  error              // the id cannot be served (wrong trust domain, no selectors)
	cancel  context.CancelFunc // ends the subscription; nil when not started
	changed chan struct{}      // closed and replaced on every change, for waiters

	health
	cert *tls.Certificate // never mutated once stored
	leaf *x509.Certificate
	// delivered: the current subscription has delivered the id at least once.
	delivered bool
	// missingSince: first update of the current subscription that omitted the
	// id while it counted (see the package doc); zero while present.
	missingSince time.Time
	revoked      bool // the held SVID was revoked (for the state text)
}

func (e *entry) broadcast() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// New checks cfg and returns a Source; nothing is dialled before Run.
func New(cfg Config) (*Source, error) {
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)
	}
	var err error
	if cfg.WorkloadSocket, err = unixTarget(cfg.WorkloadSocket); err != nil {
		return nil, fmt.Errorf("new spire source: workload socket: %w", err)
	}
	if cfg.AdminSocket, err = unixTarget(cfg.AdminSocket); err != nil {
		return nil, fmt.Errorf("new spire source: admin socket: %w", err)
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = defaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("new spire source: backoff bounds %v..%v invalid", cfg.MinBackoff, cfg.MaxBackoff)
	}
	if cfg.RevokeGrace == 0 {
		cfg.RevokeGrace = defaultRevokeGrace
	}
	if cfg.RevokeGrace < 0 {
		return nil, fmt.Errorf("new spire source: revoke grace %v negative", cfg.RevokeGrace)
	}
	if len(cfg.SelectorTemplates) == 0 {
		cfg.SelectorTemplates = DefaultSelectorTemplates
	}
	tmpls := make([]selectorTemplate, 0, len(cfg.SelectorTemplates))
	for _, t := range cfg.SelectorTemplates {
		st, err := parseSelectorTemplate(t)
		if err != nil {
			return nil, fmt.Errorf("new spire source: %w", err)
		}
		tmpls = append(tmpls, st)
	}
	s := &Source{
		cfg:        cfg,
		log:        cfg.Logger,
		now:        cfg.Now,
		templates:  tmpls,
		entries:    make(map[spiffeid.ID]*entry),
		wlBundles:  make(map[spiffeid.TrustDomain]*x509bundle.Bundle),
		delBundles: make(map[spiffeid.TrustDomain]*x509bundle.Bundle),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// unixTarget accepts "unix:///abs/path" or "/abs/path" and returns the former.
func unixTarget(addr string) (string, error) {
	p, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		p = addr
	}
	if p == "" {
		return "", errors.New("not set")
	}
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%q is not unix:///absolute/path", addr)
	}
	return "unix://" + p, nil
}

type selectorTemplate struct{ typ, value string }

func parseSelectorTemplate(t string) (selectorTemplate, error) {
	typ, value, ok := strings.Cut(t, ":")
	if !ok || typ == "" || value == "" {
		return selectorTemplate{}, fmt.Errorf("selector template %q is not type:value", t)
	}
	return selectorTemplate{typ: typ, value: value}, nil
}

// selectorsFor derives the selectors of id, which must be
// spiffe://<td>/ns/<ns>/sa/<sa> in the configured trust domain.
func (s *Source) selectorsFor(id spiffeid.ID) ([]*types.Selector, error) {
	if !id.MemberOf(s.cfg.TrustDomain) {
		return nil, fmt.Errorf("trust domain of %s is not %q: %w", id, s.cfg.TrustDomain, identity.ErrNotAuthorized)
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || seg[1] == "" || seg[3] == "" {
		return nil, fmt.Errorf("derive selectors for %s: path is not /ns/<namespace>/sa/<service account>: %w", id, identity.ErrNotAuthorized)
	}
	r := strings.NewReplacer("{ns}", seg[1], "{sa}", seg[3])
	out := make([]*types.Selector, len(s.templates))
	for i, t := range s.templates {
		out[i] = &types.Selector{Type: t.typ, Value: r.Replace(t.value)}
	}
	return out, nil
}

// Close stops Run and wakes every waiting Certificate call. Idempotent.
func (s *Source) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		for _, e := range s.entries {
			e.broadcast()
		}
		s.mu.Unlock()
		s.cancel()
		s.runWG.Wait()
	})
	return nil
}

// Certificate implements identity.Source. A wanted id not yet delivered is
// waited for until ctx ends; ids SPIRE did not issue or revoked wrap
// identity.ErrNotAuthorized; unwanted, expired ones wrap identity.ErrUnavailable.
// The tunnel's own id is served from its Workload API SVID.
func (s *Source) Certificate(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: source closed: %w", id, identity.ErrUnavailable)
		}
		now := s.now()
		e := s.entries[id]
		if e == nil {
			if c := s.own.cert; c != nil && s.own.svid.ID == id && validAt(c.Leaf, now) {
				s.mu.Unlock()
				return c, nil
			}
			s.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: not wanted on this node: %w", id, identity.ErrUnavailable)
		}
		if e.badErr != nil {
			err := e.badErr
			s.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: %w", id, err)
		}
		s.evalLocked(e, now)
		switch {
		case e.cert != nil && validAt(e.leaf, now):
			c := e.cert
			s.mu.Unlock()
			return c, nil
		case e.cert != nil:
			s.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: SVID expired at %s: %w", id, e.leaf.NotAfter.UTC().Format(time.RFC3339), identity.ErrUnavailable)
		case s.notIssuedLocked(e, now):
			what := "not issued"
			if e.revoked {
				what = "revoked"
			}
			s.mu.Unlock()
			return nil, fmt.Errorf("certificate for %s: %s by SPIRE: %w", id, what, identity.ErrNotAuthorized)
		}
		ch := e.changed
		var wake <-chan time.Time
		if e.up && !e.missingSince.IsZero() {
			timer.Reset(e.missingSince.Add(s.cfg.RevokeGrace).Sub(now))
			wake = timer.C
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-wake:
		case <-ctx.Done():
			return nil, fmt.Errorf("certificate for %s: waiting for SPIRE: %w: %w", id, identity.ErrUnavailable, ctx.Err())
		}
		if wake != nil && !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func validAt(leaf *x509.Certificate, now time.Time) bool {
	return leaf != nil && !now.Before(leaf.NotBefore) && now.Before(leaf.NotAfter)
}

// missingTooLongLocked: the connected subscription has omitted the id for the grace window.
func (s *Source) missingTooLongLocked(e *entry, now time.Time) bool {
	return e.up && !e.missingSince.IsZero() && now.Sub(e.missingSince) >= s.cfg.RevokeGrace
}

// notIssuedLocked: no SVID held and SPIRE has had the grace window to deliver one.
func (s *Source) notIssuedLocked(e *entry, now time.Time) bool {
	return e.cert == nil && s.missingTooLongLocked(e, now)
}

// evalLocked drops a held SVID once it counts as revoked.
func (s *Source) evalLocked(e *entry, now time.Time) {
	if e.cert == nil || !e.delivered || !s.missingTooLongLocked(e, now) {
		return
	}
	s.log.Warn("identity revoked by SPIRE", "id", e.id.String(), "serial", e.leaf.SerialNumber.Text(16),
		"missing_since", e.missingSince)
	e.cert, e.leaf, e.revoked = nil, nil, true
	e.broadcast()
}

// GetX509BundleForTrustDomain implements identity.Source and x509bundle.Source:
// the newest bundle for td from the delegated bundle stream or the Workload API.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	b := s.bundleLocked(td)
	s.mu.Unlock()
	if b == nil {
		return nil, fmt.Errorf("no trust bundle for trust domain %q from SPIRE: %w", td, identity.ErrUnavailable)
	}
	return b, nil
}

func (s *Source) bundleLocked(td spiffeid.TrustDomain) *x509bundle.Bundle {
	d, w := s.delBundles[td], s.wlBundles[td]
	switch {
	case d == nil:
		return w
	case w == nil:
		return d
	case s.wlBundlesAt.After(s.delBundlesAt):
		return w
	default:
		return d
	}
}

// SetWanted implements identity.Source: subscribes for new ids (if Run is
// active, else when it starts) and ends the subscriptions of, and forgets the
// SVIDs of, ids no longer listed.
func (s *Source) SetWanted(ids []spiffeid.ID) {
	want := make(map[spiffeid.ID]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for id, e := range s.entries {
		if !want[id] {
			s.releaseLocked(e)
		}
	}
	for id := range want {
		if s.entries[id] != nil {
			continue
		}
		e := &entry{id: id, changed: make(chan struct{})}
		e.sels, e.badErr = s.selectorsFor(id)
		if e.badErr != nil {
			s.log.Warn("identity cannot be served from SPIRE", "id", id.String(), "error", e.badErr)
		}
		s.entries[id] = e
		if s.running != nil {
			s.startLocked(e)
		}
	}
}

func (s *Source) releaseLocked(e *entry) {
	if e.cancel != nil {
		e.cancel()
	}
	delete(s.entries, e.id)
	e.broadcast()
	s.log.Info("identity released", "id", e.id.String())
}

// Ready implements identity.Source: own SVID and bundle present, every wanted
// id has a valid SVID, and no stream to the agent is down. Ready() == (Status() == "").
func (s *Source) Ready() bool { return s.Status() == "" }

// Status returns "" when healthy, else why the source is degraded or not ready.
func (s *Source) Status() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "closed"
	}
	if s.running == nil {
		return "not running"
	}
	now := s.now()
	var why []string
	var downSince time.Time
	var downErr error
	down := func(what string, h *health) {
		if h.downSince.IsZero() {
			return
		}
		if downSince.IsZero() || h.downSince.Before(downSince) {
			downSince = h.downSince
			downErr = fmt.Errorf("%s: %w", what, h.err)
		}
	}
	down("workload API", &s.wlHealth)
	down("delegated identity bundles", &s.bunHealth)
	var pending, notIssued, expired, invalid int
	ids := s.sortedEntriesLocked()
	for _, e := range ids {
		s.evalLocked(e, now)
		down("delegated identity "+e.id.String(), &e.health)
		switch {
		case e.badErr != nil:
			invalid++
		case e.cert != nil && validAt(e.leaf, now):
		case e.cert != nil:
			expired++
		case s.notIssuedLocked(e, now):
			notIssued++
		default:
			pending++
		}
	}
	switch {
	case downSince.IsZero():
	case isNotIssued(errors.Unwrap(downErr)):
		why = append(why, fmt.Sprintf("agent refuses the tunnel since %s (own identity not issued yet, or not an authorized delegate: %v), retrying",
			downSince.UTC().Format(time.RFC3339), downErr))
	default:
		why = append(why, fmt.Sprintf("agent unreachable since %s (%v), reconnecting",
			downSince.UTC().Format(time.RFC3339), downErr))
	}
	switch {
	case s.own.svid == nil:
		why = append(why, "no own SVID from the workload API yet")
	case !validAt(s.own.cert.Leaf, now):
		why = append(why, fmt.Sprintf("own SVID %s expired", s.own.svid.ID))
	}
	if s.bundleLocked(s.cfg.TrustDomain) == nil {
		why = append(why, fmt.Sprintf("no trust bundle for %q yet", s.cfg.TrustDomain))
	}
	for _, c := range []struct {
		n    int
		what string
	}{{pending, "pending"}, {notIssued, "not issued or revoked by SPIRE"}, {expired, "expired"}, {invalid, "without selectors"}} {
		if c.n > 0 {
			why = append(why, fmt.Sprintf("%d wanted identities %s", c.n, c.what))
		}
	}
	return strings.Join(why, "; ")
}

func (s *Source) sortedEntriesLocked() []*entry {
	out := make([]*entry, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *entry) int { return cmp.Compare(a.id.String(), b.id.String()) })
	return out
}

// Certificates implements identity.Source: the own SVID and every wanted id, sorted by id.
func (s *Source) Certificates() []identity.CertInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	out := make([]identity.CertInfo, 0, len(s.entries)+1)
	if s.own.svid != nil {
		ci := certInfo(s.own.svid.ID, s.own.cert.Leaf)
		switch {
		case !validAt(s.own.cert.Leaf, now):
			ci.State = StateExpired
		case !s.wlHealth.downSince.IsZero():
			ci.State = StateDegraded
		default:
			ci.State = identity.StateValid
		}
		out = append(out, ci)
	}
	for _, e := range s.sortedEntriesLocked() {
		s.evalLocked(e, now)
		ci := certInfo(e.id, e.leaf)
		switch {
		case e.badErr != nil:
			ci.State = StateInvalidID
		case e.cert != nil && !validAt(e.leaf, now):
			ci.State = StateExpired
		case e.cert != nil && !e.downSince.IsZero():
			ci.State = StateDegraded
		case e.cert != nil && !e.missingSince.IsZero():
			ci.State = StateMissing
		case e.cert != nil:
			ci.State = identity.StateValid
		case s.notIssuedLocked(e, now) && e.revoked:
			ci.State = StateRevoked
		case s.notIssuedLocked(e, now):
			ci.State = StateNotIssued
		default:
			ci.State = identity.StatePending
		}
		out = append(out, ci)
	}
	slices.SortStableFunc(out, func(a, b identity.CertInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func certInfo(id spiffeid.ID, leaf *x509.Certificate) identity.CertInfo {
	ci := identity.CertInfo{ID: id.String()}
	if leaf != nil {
		ci.Serial = leaf.SerialNumber.Text(16)
		ci.NotBefore = leaf.NotBefore
		ci.NotAfter = leaf.NotAfter
	}
	return ci
}

// tlsCert wraps an SVID; the result is never mutated afterwards.
func tlsCert(svid *x509svid.SVID) *tls.Certificate {
	der := make([][]byte, len(svid.Certificates))
	for i, c := range svid.Certificates {
		der[i] = c.Raw
	}
	return &tls.Certificate{Certificate: der, PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
}

var _ identity.Source = (*Source)(nil)
