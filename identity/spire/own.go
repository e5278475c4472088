package spire

import (
	"context"
	"crypto/tls"
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
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambitmesh/ambit/identity"
)

// OwnConfig configures an OwnSource.
type OwnConfig struct {
	// WorkloadSocket is the agent's Workload API, "unix:///abs/path".
	WorkloadSocket string
	Logger         *slog.Logger
	// MinBackoff and MaxBackoff bound the reconnect backoff (default 200ms / 30s).
	MinBackoff, MaxBackoff time.Duration
	Now                    func() time.Time // optional, for tests
}

// OwnSource is an identity.Source serving only the process's own SVIDs and the
// trust bundles from a SPIRE agent's Workload API, with no delegation: what a
// waypoint needs. The agent attests the process itself (its registration
// entry's selectors, e.g. unix:uid or k8s:sa), so the source cannot ask for an
// identity; it serves what the agent issues and reports a mismatch with the
// wanted identity. Rotation follows the Workload API stream. Create it with
// NewOwn, maintain the stream with Run.
type OwnSource struct {
	cfg OwnConfig
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	running bool
	svids   map[spiffeid.ID]*ownState // from the latest update
	order   []spiffeid.ID             // the update's order (the first is the default SVID)
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
	wanted  []spiffeid.ID
	wl      health
	changed chan struct{} // closed and replaced on every update, for waiters
}

// NewOwn checks cfg and returns an OwnSource; nothing is dialled before Run.
func NewOwn(cfg OwnConfig) (*OwnSource, error) {
	var err error
	if cfg.WorkloadSocket, err = unixTarget(cfg.WorkloadSocket); err != nil {
		return nil, fmt.Errorf("new spire workload source: workload socket: %w", err)
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = defaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("new spire workload source: backoff bounds %v..%v invalid", cfg.MinBackoff, cfg.MaxBackoff)
	}
	s := &OwnSource{cfg: cfg, log: cfg.Logger, now: cfg.Now, changed: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Run maintains the Workload API stream until ctx ends and returns nil then; a
// broken stream is reopened with backoff while held SVIDs are served until they
// expire.
func (s *OwnSource) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("run spire workload source: already running")
	}
	s.running = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running, s.wl = false, health{}
		s.mu.Unlock()
	}()
	c, err := workloadapi.New(ctx,
		workloadapi.WithAddr(s.cfg.WorkloadSocket),
		workloadapi.WithBackoffStrategy(backoffStrategy{min: s.cfg.MinBackoff, max: s.cfg.MaxBackoff}))
	if err != nil {
		return fmt.Errorf("dial spire agent workload API %s: %w", s.cfg.WorkloadSocket, err)
	}
	defer c.Close()
	s.log.Info("spire workload source started", "workload_socket", s.cfg.WorkloadSocket)
	err = c.WatchX509Context(ctx, (*ownWatcher)(s))
	s.log.Info("spire workload source stopped")
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("watch spire workload API %s: %w", s.cfg.WorkloadSocket, err)
}

// ownWatcher receives the Workload API stream.
type ownWatcher OwnSource

func (w *ownWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	(*OwnSource)(w).update(c.SVIDs, c.Bundles.Bundles())
}

func (w *ownWatcher) OnX509ContextWatchError(err error) {
	s := (*OwnSource)(w)
	if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		return
	}
	s.mu.Lock()
	wasDown := !s.wl.downSince.IsZero()
	s.wl.setDown(s.now(), err)
	s.mu.Unlock()
	if wasDown || isNotIssued(err) {
		s.log.Debug("workload API stream failed", "error", err)
		return
	}
	s.log.Warn("workload API stream failed", "error", err)
}

// update replaces the held SVIDs and bundles with those of one stream message.
func (s *OwnSource) update(svids []*x509svid.SVID, bundles []*x509bundle.Bundle) {
	set := make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(bundles))
	for _, b := range bundles {
		set[b.TrustDomain()] = b
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.wl.downSince.IsZero() {
		s.log.Info("workload API stream restored", "down_since", s.wl.downSince)
	}
	s.wl.setUp()
	held := make(map[spiffeid.ID]*ownState, len(svids))
	order := make([]spiffeid.ID, 0, len(svids))
	changed := len(svids) != len(s.order)
	for _, sv := range svids {
		if len(sv.Certificates) == 0 || held[sv.ID] != nil {
			continue
		}
		leaf := sv.Certificates[0]
		if old := s.svids[sv.ID]; old != nil && old.svid.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			held[sv.ID] = old
		} else {
			held[sv.ID] = &ownState{svid: sv, cert: tlsCert(sv)}
			changed = true
			s.log.Info("own SVID updated", "id", sv.ID.String(), "serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
		}
		order = append(order, sv.ID)
	}
	s.svids, s.order = held, order
	if changed {
		for _, id := range s.wanted {
			if held[id] == nil {
				s.log.Warn("SPIRE did not issue the wanted identity", "want", id.String(), "issued", s.issuedLocked())
			}
		}
	}
	s.logBundleChangesLocked(set)
	s.bundles = set
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *OwnSource) logBundleChangesLocked(cur map[spiffeid.TrustDomain]*x509bundle.Bundle) {
	for td, b := range cur {
		if o := s.bundles[td]; o == nil || !o.Equal(b) {
			s.log.Info("trust bundle updated", "source", "workload API", "trust_domain", td.Name(), "roots", len(b.X509Authorities()))
		}
	}
}

// Certificate returns the SVID for id, waiting for the first update while ctx
// lasts. An id the agent does not issue to this process is refused with
// identity.ErrNotAuthorized.
func (s *OwnSource) Certificate(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	for {
		s.mu.Lock()
		if len(s.order) > 0 {
			st := s.svids[id]
			if st == nil {
				err := fmt.Errorf("spire workload API: %w: SPIRE issued %s to this process, not %s", identity.ErrNotAuthorized, s.issuedLocked(), id)
				s.mu.Unlock()
				return nil, err
			}
			if !validAt(st.svid.Certificates[0], s.now()) {
				s.mu.Unlock()
				return nil, fmt.Errorf("spire workload API: %w: SVID %s has expired", identity.ErrUnavailable, id)
			}
			c := st.cert
			s.mu.Unlock()
			return c, nil
		}
		ch, reason := s.changed, s.pendingLocked()
		s.mu.Unlock()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("spire workload API: %w: %s for %s", identity.ErrUnavailable, reason, id)
		}
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
}

// issuedLocked lists the held SVIDs' IDs.
func (s *OwnSource) issuedLocked() string {
	ids := make([]string, len(s.order))
	for i, id := range s.order {
		ids[i] = id.String()
	}
	return strings.Join(ids, ", ")
}

// pendingLocked says why no SVID is held.
func (s *OwnSource) pendingLocked() string {
	if s.wl.err != nil {
		return fmt.Sprintf("no SVID from the SPIRE agent yet (%v)", s.wl.err)
	}
	return "no SVID from the SPIRE agent yet"
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *OwnSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.bundles[td]; b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("spire workload API: %w: no trust bundle for trust domain %q", identity.ErrUnavailable, td.Name())
}

// SetWanted records the identities the process must hold; it cannot request
// them (the agent decides), only report in Status when they are not issued.
func (s *OwnSource) SetWanted(ids []spiffeid.ID) {
	s.mu.Lock()
	s.wanted = slices.Clone(ids)
	s.mu.Unlock()
}

// Ready reports whether a valid SVID is held and it is every wanted identity.
func (s *OwnSource) Ready() bool { return s.Status() == "" }

// Status is "" when ready, else why not.
func (s *OwnSource) Status() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) == 0 {
		return s.pendingLocked()
	}
	now := s.now()
	var probs []string
	if len(s.wanted) == 0 {
		if st := s.svids[s.order[0]]; !validAt(st.svid.Certificates[0], now) {
			probs = append(probs, fmt.Sprintf("SVID %s has expired", s.order[0]))
		}
	}
	for _, id := range s.wanted {
		st := s.svids[id]
		switch {
		case st == nil:
			probs = append(probs, fmt.Sprintf("SPIRE issued %s, want %s", s.issuedLocked(), id))
		case !validAt(st.svid.Certificates[0], now):
			probs = append(probs, fmt.Sprintf("SVID %s has expired", id))
		}
	}
	if len(probs) > 0 && s.wl.err != nil && !s.wl.up {
		probs = append(probs, fmt.Sprintf("workload API: %v", s.wl.err))
	}
	return strings.Join(probs, "; ")
}

// Certificates describes the held SVIDs and the wanted ones not held.
func (s *OwnSource) Certificates() []identity.CertInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	out := make([]identity.CertInfo, 0, len(s.order)+len(s.wanted))
	for _, id := range s.order {
		leaf := s.svids[id].svid.Certificates[0]
		ci := certInfo(id, leaf)
		ci.State = identity.StateValid
		if !validAt(leaf, now) {
			ci.State = StateExpired
		} else if !s.wl.downSince.IsZero() {
			ci.State = StateDegraded
		}
		out = append(out, ci)
	}
	for _, id := range s.wanted {
		if s.svids[id] != nil {
			continue
		}
		ci := identity.CertInfo{ID: id.String(), State: identity.StatePending}
		if len(s.order) > 0 {
			ci.State = StateNotIssued
		}
		out = append(out, ci)
	}
	return out
}

var _ identity.Source = (*OwnSource)(nil)
