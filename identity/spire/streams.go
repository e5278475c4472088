package spire

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ambitmesh/ambit/identity"
)

// notIssuedRetry is the retry delay after PermissionDenied while the agent has
// not yet synced the tunnel's own entry (its first Recv fails that way).
const (
	notIssuedRetry    = 100 * time.Millisecond
	notIssuedRetryMax = 50 // then the normal exponential backoff applies
)

type runState struct {
	ctx    context.Context
	client delegatedv1.DelegatedIdentityClient
	wg     sync.WaitGroup // every stream goroutine of this Run
}

// Run dials the agent and maintains the Workload API stream, the delegated
// bundle stream and one delegated SVID subscription per wanted identity until
// ctx ends or the Source is closed; it returns nil then. Streams that fail are
// reopened with exponential backoff and jitter; meanwhile held SVIDs are
// served until they expire and Status reports the outage.
func (s *Source) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	if s.running != nil {
		s.mu.Unlock()
		return errors.New("run spire source: already running")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()

	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()), // a local unix socket; the agent attests the caller by its peer credentials
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  s.cfg.MinBackoff,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   s.cfg.MaxBackoff,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	conn, err := grpc.NewClient(s.cfg.AdminSocket, dialOpts...)
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("dial spire agent admin socket %s: %w", s.cfg.AdminSocket, err)
	}
	defer conn.Close()
	wl, err := workloadapi.New(ctx,
		workloadapi.WithAddr(s.cfg.WorkloadSocket),
		workloadapi.WithDialOptions(dialOpts[1]),
		workloadapi.WithBackoffStrategy(backoffStrategy{min: s.cfg.MinBackoff, max: s.cfg.MaxBackoff}))
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("dial spire agent workload API %s: %w", s.cfg.WorkloadSocket, err)
	}
	defer wl.Close()

	rs := &runState{ctx: ctx, client: delegatedv1.NewDelegatedIdentityClient(conn)}
	s.running = rs
	s.runWG.Add(1)
	defer s.runWG.Done()
	rs.wg.Add(2)
	go func() {
		defer rs.wg.Done()
		_ = wl.WatchX509Context(ctx, (*wlWatcher)(s))
	}()
	go func() {
		defer rs.wg.Done()
		s.watchBundles(ctx, rs.client)
	}()
	for _, e := range s.entries {
		s.startLocked(e)
	}
	s.mu.Unlock()
	s.log.Info("spire source started", "workload_socket", s.cfg.WorkloadSocket, "admin_socket", s.cfg.AdminSocket)

	<-ctx.Done()
	s.mu.Lock()
	s.running = nil // no new subscriptions; the running ones end with ctx
	for _, e := range s.entries {
		e.cancel = nil
	}
	s.mu.Unlock()
	rs.wg.Wait()
	s.mu.Lock()
	s.wlHealth, s.bunHealth = health{}, health{}
	s.mu.Unlock()
	s.log.Info("spire source stopped")
	return nil
}

// startLocked starts the subscription of e (Run active, e not started).
func (s *Source) startLocked(e *entry) {
	if e.badErr != nil || e.cancel != nil {
		return
	}
	rs := s.running
	ctx, cancel := context.WithCancel(rs.ctx)
	e.cancel = cancel
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		s.watchID(ctx, rs.client, e)
	}()
}

// watchID keeps one SubscribeToX509SVIDs stream open for e.
func (s *Source) watchID(ctx context.Context, client delegatedv1.DelegatedIdentityClient, e *entry) {
	b := &backoff{min: s.cfg.MinBackoff, max: s.cfg.MaxBackoff}
	for {
		err := s.subscribeID(ctx, client, e, b)
		if ctx.Err() != nil {
			s.streamEnded(e, nil)
			return
		}
		wait := b.after(err)
		wasDown := s.streamEnded(e, err)
		s.logStreamError(wasDown, "delegated identity subscription failed", err, wait, "id", e.id.String())
		sleep(ctx, wait)
	}
}

// streamEnded records the end of e's subscription (err nil: stopped on
// purpose) and reports whether it was already down. The next subscription
// starts over: an omission it has not seen cannot count against a held SVID,
// so an outage never revokes.
func (s *Source) streamEnded(e *entry, err error) (wasDown bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wasDown = !e.downSince.IsZero()
	if err == nil {
		e.up = false
	} else {
		e.setDown(s.now(), err)
	}
	e.delivered, e.missingSince = false, time.Time{}
	e.broadcast()
	return wasDown
}

func (s *Source) subscribeID(ctx context.Context, client delegatedv1.DelegatedIdentityClient, e *entry, b *backoff) error {
	stream, err := client.SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{Selectors: e.sels})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		b.reset()
		s.applySVIDs(e, resp.GetX509Svids())
	}
}

// applySVIDs handles one update of e's subscription; see the package doc.
func (s *Source) applySVIDs(e *entry, svids []*delegatedv1.X509SVIDWithKey) {
	found, present := s.pick(e.id, svids)

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if !e.up && !e.downSince.IsZero() {
		s.log.Info("delegated identity subscription restored", "id", e.id.String(), "down_since", e.downSince)
	}
	wasUp := e.up
	e.setUp()
	changed := !wasUp
	switch {
	case found != nil:
		e.delivered = true
		if !e.missingSince.IsZero() {
			e.missingSince = time.Time{}
			changed = true
		}
		leaf := found.Certificates[0]
		switch {
		case e.leaf != nil && e.leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0:
			// Duplicate: nothing to do.
		case !now.Before(leaf.NotAfter):
			s.log.Warn("ignoring expired SVID from SPIRE", "id", e.id.String(), "serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
		default:
			e.cert, e.leaf, e.revoked = tlsCert(found), leaf, false
			changed = true
			s.log.Info("SVID updated", "id", e.id.String(), "serial", leaf.SerialNumber.Text(16),
				"not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
		}
	case present:
		// Delivered but unusable (logged by pick): neither new nor missing.
	case e.missingSince.IsZero() && (e.delivered || e.cert == nil):
		e.missingSince = now
		changed = true
		if e.cert != nil {
			s.log.Warn("identity missing from SPIRE update", "id", e.id.String(), "svids_in_update", len(svids), "grace", s.cfg.RevokeGrace)
		}
	}
	if changed {
		e.broadcast()
	}
}

// pick returns the parsed SVID for id from an update, and whether the update
// mentioned id at all (an unparsable SVID for id is present but nil). Other
// identities' keys are not parsed.
func (s *Source) pick(id spiffeid.ID, svids []*delegatedv1.X509SVIDWithKey) (*x509svid.SVID, bool) {
	present := false
	for _, sv := range svids {
		x := sv.GetX509Svid()
		if pid := x.GetId(); pid != nil && (pid.GetTrustDomain() != id.TrustDomain().Name() || pid.GetPath() != id.Path()) {
			continue // someone else's (the request's selectors are a superset of theirs)
		}
		svid, err := x509svid.ParseRaw(bytes.Join(x.GetCertChain(), nil), sv.GetX509SvidKey())
		if err != nil {
			// The error text never includes key material.
			s.log.Warn("unusable SVID from SPIRE", "id", id.String(), "error", err)
			if x.GetId() != nil {
				present = true
			}
			continue
		}
		if svid.ID == id {
			// Peers would refuse it; keep what is held rather than present it.
			if err := identity.CheckOwnChain(svid.Certificates); err != nil {
				s.log.Warn("unusable SVID from SPIRE", "id", id.String(), "error", err)
				return nil, true
			}
			return svid, true
		}
	}
	return nil, present
}

// watchBundles keeps the SubscribeToX509Bundles stream open.
func (s *Source) watchBundles(ctx context.Context, client delegatedv1.DelegatedIdentityClient) {
	b := &backoff{min: s.cfg.MinBackoff, max: s.cfg.MaxBackoff}
	for {
		err := s.subscribeBundles(ctx, client, b)
		if ctx.Err() != nil {
			s.mu.Lock()
			s.bunHealth.up = false
			s.mu.Unlock()
			return
		}
		wait := b.after(err)
		s.mu.Lock()
		wasDown := !s.bunHealth.downSince.IsZero()
		s.bunHealth.setDown(s.now(), err)
		s.mu.Unlock()
		s.logStreamError(wasDown, "delegated bundle subscription failed", err, wait)
		sleep(ctx, wait)
	}
}

func (s *Source) subscribeBundles(ctx context.Context, client delegatedv1.DelegatedIdentityClient, b *backoff) error {
	stream, err := client.SubscribeToX509Bundles(ctx, &delegatedv1.SubscribeToX509BundlesRequest{})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		b.reset()
		set := make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(resp.GetCaCertificates()))
		for name, der := range resp.GetCaCertificates() {
			td, err := spiffeid.TrustDomainFromString(name)
			if err != nil {
				s.log.Warn("ignoring bundle with a bad trust domain", "trust_domain", name, "error", err)
				continue
			}
			certs, err := x509.ParseCertificates(der)
			if err != nil || len(certs) == 0 {
				s.log.Warn("ignoring unparsable bundle", "trust_domain", name, "error", err)
				continue
			}
			set[td] = x509bundle.FromX509Authorities(td, certs)
		}
		s.mu.Lock()
		s.bunHealth.setUp()
		s.logBundleChanges("delegated identity API", s.delBundles, set)
		s.delBundles, s.delBundlesAt = set, s.now()
		s.mu.Unlock()
	}
}

func (s *Source) logBundleChanges(from string, old, cur map[spiffeid.TrustDomain]*x509bundle.Bundle) {
	for td, b := range cur {
		if o := old[td]; o == nil || !o.Equal(b) {
			s.log.Info("trust bundle updated", "source", from, "trust_domain", td.Name(), "roots", len(b.X509Authorities()))
		}
	}
}

// wlWatcher receives the Workload API stream (the tunnel's own SVID and bundles).
type wlWatcher Source

func (w *wlWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	s := (*Source)(w)
	svid := c.DefaultSVID()
	set := make(map[spiffeid.TrustDomain]*x509bundle.Bundle)
	for _, b := range c.Bundles.Bundles() {
		set[b.TrustDomain()] = b
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.wlHealth.downSince.IsZero() {
		s.log.Info("workload API stream restored", "down_since", s.wlHealth.downSince)
	}
	s.wlHealth.setUp()
	if old := s.own.svid; old == nil || old.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		s.own = ownState{svid: svid, cert: tlsCert(svid)}
		leaf := svid.Certificates[0]
		s.log.Info("own SVID updated", "id", svid.ID.String(), "serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
		if !svid.ID.MemberOf(s.cfg.TrustDomain) {
			s.log.Warn("own SVID is outside the configured trust domain", "id", svid.ID.String(), "trust_domain", s.cfg.TrustDomain.Name())
		}
	}
	s.logBundleChanges("workload API", s.wlBundles, set)
	s.wlBundles, s.wlBundlesAt = set, s.now()
}

func (w *wlWatcher) OnX509ContextWatchError(err error) {
	s := (*Source)(w)
	if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		return
	}
	s.mu.Lock()
	wasDown := !s.wlHealth.downSince.IsZero()
	s.wlHealth.setDown(s.now(), err)
	s.mu.Unlock()
	s.logStreamError(wasDown, "workload API stream failed", err, 0)
}

// logStreamError warns on the first failure of a series and stays quiet (debug) after.
func (s *Source) logStreamError(wasDown bool, msg string, err error, wait time.Duration, attrs ...any) {
	attrs = append(attrs, "error", err)
	if wait > 0 {
		attrs = append(attrs, "retry_in", wait)
	}
	if wasDown || isNotIssued(err) {
		s.log.Debug(msg, attrs...)
		return
	}
	s.log.Warn(msg, attrs...)
}

// isNotIssued: the agent has not (yet) issued the tunnel's own identity or it
// is not an authorized delegate.
func isNotIssued(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.PermissionDenied && strings.Contains(st.Message(), "no identity issued")
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// backoff is exponential from min to max with up to 20% jitter subtracted;
// PermissionDenied "no identity issued" is retried quickly for a while since
// the agent normally issues the tunnel's identity within seconds.
type backoff struct {
	min, max  time.Duration
	n         int // consecutive failures
	notIssued int // consecutive "no identity issued" failures
}

func (b *backoff) reset() { b.n, b.notIssued = 0, 0 }

// after returns the wait after a failure with err.
func (b *backoff) after(err error) time.Duration {
	if isNotIssued(err) && b.notIssued < notIssuedRetryMax {
		b.notIssued++
		return min(notIssuedRetry, b.max)
	}
	return b.Next()
}

// Next implements workloadapi.Backoff.
func (b *backoff) Next() time.Duration {
	d := b.min
	for i := 0; i < b.n && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	b.n++
	if j := int64(d / 5); j > 0 {
		d -= time.Duration(mrand.Int64N(j + 1))
	}
	return d
}

// Reset implements workloadapi.Backoff.
func (b *backoff) Reset() { b.reset() }

type backoffStrategy struct{ min, max time.Duration }

func (s backoffStrategy) NewBackoff() workloadapi.Backoff { return &backoff{min: s.min, max: s.max} }
