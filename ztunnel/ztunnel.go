// Package ztunnel is the node tunnel: it accepts traffic captured from the node's
// enrolled pods, carries it to other nodes over HBONE with the pods' own identities,
// accepts HBONE and plaintext traffic for local pods, and delivers it with the
// client's address preserved.
package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/internal/relay"
	"github.com/ambitmesh/ambit/internal/sockio"
	"github.com/ambitmesh/ambit/internal/workers"
)

// Capture is the packet-capture layer (redirect.Capture in production).
type Capture interface {
	EnrollPod(ip netip.Addr, hostIfindex int) error
	UnenrollPod(ip netip.Addr) error
	Pods() map[netip.Addr]int
	// SetPlainPods sets the host veths of local pods outside the mesh, whose
	// connections to enrolled pods are captured as inbound ones.
	SetPlainPods(hostIfindexes []int) error
	Attached() bool
	Close() error
}

// Deps are ztunnel's collaborators. Nil fields are built from Config.
type Deps struct {
	Logger   *slog.Logger
	Registry *prometheus.Registry

	// Store holds the mesh model and ModelSource feeds it (a Kubernetes source, say). If
	// both are nil, a YAML file source for Config.ModelPath is used.
	Store       *discovery.Store
	ModelSource Runner
	// ModelProblems, if set, reports objects the model source could not use, for the
	// admin view (an event-style status per bad object).
	ModelProblems func() any
	// Identity provides certificates. If nil, a Manager backed by the built-in CA is used.
	Identity identity.Source
	// NewCapture attaches the eBPF capture. If nil, redirect.New is used.
	NewCapture func(cfg Config, log *slog.Logger) (Capture, error)
	// HostInterface finds the host-side interface of a pod.
	HostInterface func(podIP netip.Addr) (int, error)

	// Listen opens a transparent listener; DialTransparent dials with a non-local source
	// address; Dial is a plain dialer for HBONE peers and passthrough.
	Listen          func(ctx context.Context, addr netip.AddrPort) (net.Listener, error)
	DialTransparent func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	Dial            func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Runner is a component that runs until its context ends.
type Runner interface {
	Run(ctx context.Context) error
}

// Ztunnel is one node tunnel.
type Ztunnel struct {
	cfg Config
	td  spiffeid.TrustDomain
	log *slog.Logger
	reg *prometheus.Registry
	m   *metrics

	workers *workers.Pool // runs the captured connections' handlers

	store       *discovery.Store
	modelSource Runner
	problems    func() any
	ident       identity.Source

	newCapture    func(cfg Config, log *slog.Logger) (Capture, error)
	hostInterface func(netip.Addr) (int, error)
	listen        func(ctx context.Context, addr netip.AddrPort) (net.Listener, error)
	dialT         func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)

	pool   HBONEDialer
	server HBONEServer
	relay  *relay.Relay
	conns  *connTable
	limits *peerLimits
	health *endpointHealth // service endpoints whose connects failed lately
	// authorize is asked on every path to a local pod (see toLocal): the policies
	// (authorizePolicy) unless a test replaces it.
	authorize authorizer

	captureMu sync.Mutex
	capture   Capture

	listenersUp atomic.Bool
	closeOnce   sync.Once
	rr          sync.Map // service key -> *atomic.Uint64, round-robin cursors
}

// New validates cfg and builds a ztunnel; nothing touches the network until Run.
func New(cfg Config, deps Deps) (*Ztunnel, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	td, _ := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	z := &Ztunnel{
		cfg:           cfg,
		td:            td,
		workers:       workers.New(64),
		log:           deps.Logger,
		reg:           deps.Registry,
		store:         deps.Store,
		modelSource:   deps.ModelSource,
		problems:      deps.ModelProblems,
		ident:         deps.Identity,
		newCapture:    deps.NewCapture,
		hostInterface: deps.HostInterface,
		listen:        deps.Listen,
		dialT:         deps.DialTransparent,
		dial:          deps.Dial,
		conns:         newConnTable(),
		limits:        newPeerLimits(cfg.MaxStreamsPerPeer, cfg.MaxUpstreamsPerPeer),
		health:        newEndpointHealth(cfg.EndpointBackoff, cfg.EndpointBackoffMax),
		// The streams' receive paths write straight into the sockets they relay to.
		relay: &relay.Relay{NonBlocking: sockio.NonBlocking},
	}
	if z.log == nil {
		z.log = slog.New(slog.DiscardHandler)
	}
	z.log = z.log.With(keyNode, cfg.NodeName)
	if z.reg == nil {
		z.reg = prometheus.NewRegistry()
	}
	z.m = newMetrics(z.reg)
	z.authorize = z.authorizePolicy
	if z.dial == nil {
		d := &net.Dialer{Timeout: cfg.ConnectTimeout}
		z.dial = d.DialContext
	}
	if err := z.platformDefaults(); err != nil {
		return nil, err
	}
	if z.store == nil {
		if cfg.ModelPath == "" {
			return nil, fmt.Errorf("%w: model path is required without another model source", ErrConfig)
		}
		z.store = discovery.NewStore()
		fs, err := discovery.NewFileSource(discovery.FileSourceConfig{
			Path:          cfg.ModelPath,
			Options:       cfg.Enrollment,
			PolicyPath:    cfg.PolicyPath,
			RootNamespace: cfg.RootNamespace,
			Logger:        z.log,
		}, z.store)
		if err != nil {
			return nil, fmt.Errorf("model source: %w", err)
		}
		z.modelSource = fs
	}
	if z.ident == nil {
		mgr, err := newCAManager(cfg, td, z.log)
		if err != nil {
			return nil, err
		}
		z.ident = mgr
	}
	pool, err := hbone.NewPool(hbone.ClientConfig{
		Dial: z.dial,
		TLSConfig: func(src, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientTLSConfig(z.ident, src, dst), nil
		},
		ConnsPerDest: cfg.HBONEConnsPerPeer,
		IdleTimeout:  cfg.HBONEPoolIdleTimeout,
		Records:      cfg.DataPath.records(),
		Logger:       z.log,
	})
	if err != nil {
		return nil, fmt.Errorf("hbone pool: %w", err)
	}
	z.pool = poolDialer{pool}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerTLSConfig(z.ident, td, z.pickServerIdentity),
		Handler:   hbone.HandlerFunc(func(s *hbone.Stream) { z.serveHBONE(s) }),
		Records:   cfg.DataPath.records(),
		Logger:    z.log,
	})
	if err != nil {
		return nil, fmt.Errorf("hbone server: %w", err)
	}
	z.server = srv
	return z, nil
}

func newCAManager(cfg Config, td spiffeid.TrustDomain, log *slog.Logger) (*identity.Manager, error) {
	mgr, err := ca.NewCertManager(cfg.CAAddr, cfg.CATokenFile, cfg.CARootFile, td, log)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return mgr, nil
}

// Run runs ztunnel until ctx ends, then drains and returns.
func (z *Ztunnel) Run(ctx context.Context) error {
	defer z.Close()
	g, ctx := errgroup.WithContext(ctx)

	if z.modelSource != nil {
		g.Go(func() error { return z.modelSource.Run(ctx) })
	}
	if r, ok := z.ident.(Runner); ok {
		// The built-in CA manager and the SPIRE source keep their certificates fresh.
		g.Go(func() error { return r.Run(ctx) })
	}

	// Know the model before capturing anything: a bad model must stop ztunnel before it
	// takes over any pod's traffic.
	if err := z.store.WaitSynced(ctx); err != nil {
		if gerr := g.Wait(); gerr != nil {
			return gerr
		}
		return err
	}

	capture, err := z.newCapture(z.cfg, z.log)
	if err != nil {
		return fmt.Errorf("attach capture: %w", err)
	}
	z.captureMu.Lock()
	z.capture = capture
	z.captureMu.Unlock()

	lnOut, err := z.listen(ctx, z.cfg.OutboundAddr)
	if err != nil {
		return fmt.Errorf("listen outbound %s: %w", z.cfg.OutboundAddr, err)
	}
	lnIn, err := z.listen(ctx, z.cfg.InboundAddr)
	if err != nil {
		lnOut.Close()
		return fmt.Errorf("listen inbound %s: %w", z.cfg.InboundAddr, err)
	}
	lnHBONE, err := z.listen(ctx, z.cfg.HBONEAddr)
	if err != nil {
		lnOut.Close()
		lnIn.Close()
		return fmt.Errorf("listen hbone %s: %w", z.cfg.HBONEAddr, err)
	}
	z.listenersUp.Store(true)

	httpSrvs, err := z.startHTTP()
	if err != nil {
		lnOut.Close()
		lnIn.Close()
		lnHBONE.Close()
		return err
	}

	g.Go(func() error { return z.acceptLoop(ctx, lnOut, z.handleOutbound) })
	g.Go(func() error { return z.acceptLoop(ctx, lnIn, z.handleInboundPlain) })
	g.Go(func() error {
		err := z.server.Serve(lnHBONE)
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error { return z.reconcileLoop(ctx) })
	g.Go(func() error { return z.recheckLoop(ctx) })
	g.Go(func() error { return z.healthLoop(ctx) })

	z.log.Info(msgStarted,
		keyOutbound, z.cfg.OutboundAddr.String(),
		keyInbound, z.cfg.InboundAddr.String(),
		keyHBONE, z.cfg.HBONEAddr.String())

	<-ctx.Done()
	z.log.Info(msgDraining)
	z.listenersUp.Store(false)
	lnOut.Close()
	lnIn.Close()
	drainCtx, cancel := context.WithTimeout(context.Background(), z.cfg.DrainTimeout)
	defer cancel()
	_ = z.server.Shutdown(drainCtx) // also closes lnHBONE
	z.conns.drain(drainCtx)
	_ = httpSrvs.Shutdown(drainCtx)
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (z *Ztunnel) acceptLoop(ctx context.Context, ln net.Listener, handle func(context.Context, net.Conn)) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Temporary resource exhaustion (EMFILE): back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			z.log.Warn(msgAcceptError, keyError, err)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		z.workers.Go(func() { handle(ctx, c) })
	}
}

// Ready reports readiness: model synced, capture attached, listeners up and
// certificates held for every local enrolled workload.
func (z *Ztunnel) Ready() error {
	if !z.store.Synced() {
		return errors.New("mesh model not synced")
	}
	z.captureMu.Lock()
	c := z.capture
	z.captureMu.Unlock()
	if c == nil || !c.Attached() {
		return errors.New("capture not attached")
	}
	if !z.listenersUp.Load() {
		return errors.New("listeners not up")
	}
	if st, ok := z.ident.(interface{ Status() string }); ok {
		if s := st.Status(); s != "" {
			return fmt.Errorf("identity source degraded: %s", s)
		}
	}
	if !z.ident.Ready() {
		return errors.New("certificates not loaded")
	}
	return nil
}

// Close releases everything; capture stays attached (pinned) so pods fail closed.
func (z *Ztunnel) Close() error {
	z.closeOnce.Do(func() {
		z.pool.Close()
		z.server.Close()
		z.workers.Close()
		z.captureMu.Lock()
		if z.capture != nil {
			z.capture.Close()
		}
		z.captureMu.Unlock()
		if c, ok := z.ident.(io.Closer); ok {
			c.Close()
		}
	})
	return nil
}
