// Package waypoint is Ambit's L7 proxy: it terminates HBONE with its own SPIFFE
// identity, takes the traffic of the Services and workloads bound to it (their
// ztunnels send it here, CONNECT authority = the original destination), handles HTTP
// per request and anything else as TCP, and forwards to the chosen endpoint over HBONE
// with its own identity, carrying the client's address.
package waypoint

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/internal/relay"
	"github.com/ambitmesh/ambit/internal/serve"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// Runner is a long-running collaborator (model source, certificate manager).
type Runner interface {
	Run(ctx context.Context) error
}

// Deps are the waypoint's collaborators. Nil fields are built from Config.
type Deps struct {
	Logger   *slog.Logger
	Registry *prometheus.Registry
	// Store holds the mesh model and ModelSource feeds it; if both are nil, the file
	// source of Config.ModelPath and ManifestPath is used.
	Store       *discovery.Store
	ModelSource Runner
	// Identity serves the waypoint's certificate (default: the built-in CA).
	Identity identity.Source
	// Dial dials TCP (default: a net.Dialer with Config.ConnectTimeout).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Waypoint is one waypoint process. Use New, then Run.
type Waypoint struct {
	cfg  Config
	td   spiffeid.TrustDomain
	self spiffeid.ID
	ref  string // "namespace/name"

	log         *slog.Logger
	reg         *prometheus.Registry
	m           *metrics
	store       *discovery.Store
	modelSource Runner
	ident       identity.Source
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	server      *hbone.Server
	pool        *hbone.Pool
	relay       relay.Relay
	front       *httpFront
	fast        *fastFront // nil unless Config.DataPath is DataPathFast

	routes    routesCache
	tcp       tcpStreams
	clusters  clusters
	closeOnce sync.Once
}

// New validates cfg and builds a waypoint; nothing touches the network until Run.
func New(cfg Config, deps Deps) (*Waypoint, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	self, _ := identity.WorkloadID(td, cfg.Namespace, cfg.ServiceAccount)
	w := &Waypoint{
		cfg: cfg, td: td, self: self, ref: cfg.Namespace + "/" + cfg.Name,
		log: deps.Logger, reg: deps.Registry, store: deps.Store, modelSource: deps.ModelSource,
		ident: deps.Identity, dial: deps.Dial,
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.log = w.log.With(keyWaypoint, w.ref)
	if w.reg == nil {
		w.reg = prometheus.NewRegistry()
	}
	w.m = newMetrics(w.reg)
	w.reg.MustRegister(clusterCollector{&w.clusters})
	if w.dial == nil {
		d := &net.Dialer{Timeout: cfg.ConnectTimeout}
		w.dial = d.DialContext
	}
	if w.store == nil {
		if cfg.ModelPath == "" {
			return nil, fmt.Errorf("%w: -model is required without another model source", ErrConfig)
		}
		w.store = discovery.NewStore()
		fs, err := discovery.NewFileSource(discovery.FileSourceConfig{
			Path: cfg.ModelPath, Options: cfg.Enrollment, PolicyPath: cfg.ManifestPath,
			RootNamespace: cfg.RootNamespace, WaypointClass: cfg.WaypointClass, Logger: w.log,
		}, w.store)
		if err != nil {
			return nil, fmt.Errorf("model source: %w", err)
		}
		w.modelSource = fs
	}
	if w.ident == nil {
		mgr, err := ca.NewCertManager(cfg.CAAddr, cfg.CATokenFile, cfg.CARootFile, td, w.log)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		w.ident = mgr
	}
	// Any source learns the one identity the waypoint serves; a SPIRE source
	// reports in readiness when the agent issues another.
	w.ident.SetWanted([]spiffeid.ID{self})
	pool, err := hbone.NewPool(hbone.ClientConfig{
		Dial: w.dial,
		TLSConfig: func(src, dst spiffeid.ID) (*tls.Config, error) {
			return identity.ClientTLSConfig(w.ident, src, dst), nil
		},
		Logger: w.log,
	})
	if err != nil {
		return nil, fmt.Errorf("hbone pool: %w", err)
	}
	w.pool = pool
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: identity.ServerTLSConfig(w.ident, td, func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return w.self, nil }),
		Handler:   hbone.HandlerFunc(w.serveHBONE),
		Logger:    w.log,
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("hbone server: %w", err)
	}
	w.server = srv
	w.front = newHTTPFront(w)
	if cfg.DataPath == DataPathFast {
		w.fast = newFastFront(w)
	}
	return w, nil
}

// Run serves until ctx ends, then drains and returns.
func (w *Waypoint) Run(ctx context.Context) error {
	defer w.Close()
	g, ctx := errgroup.WithContext(ctx)
	if w.modelSource != nil {
		g.Go(func() error { return w.modelSource.Run(ctx) })
	}
	if r, ok := w.ident.(Runner); ok {
		g.Go(func() error { return r.Run(ctx) })
	}
	if err := w.store.WaitSynced(ctx); err != nil {
		if gerr := g.Wait(); gerr != nil {
			return gerr
		}
		return err
	}
	ln, err := net.Listen("tcp", w.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", w.cfg.ListenAddr, err)
	}
	endpoints, err := serve.Start(w.cfg.Serve, serve.Handlers{
		Ready:   w.ready,
		Metrics: w.reg,
		Admin:   map[string]http.Handler{"/config_dump": http.HandlerFunc(w.configDump)},
		Logger:  w.log,
	})
	if err != nil {
		ln.Close()
		return err
	}
	g.Go(func() error {
		err := w.server.Serve(ln)
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	})
	g.Go(w.front.run)
	g.Go(func() error { return w.recheckLoop(ctx) })
	w.log.Info(msgStarted, keyAddr, ln.Addr().String(), keyIdentity, w.self.String())

	<-ctx.Done()
	w.log.Info(msgDraining)
	drainCtx, cancel := context.WithTimeout(context.Background(), w.cfg.DrainTimeout)
	defer cancel()
	_ = w.server.Shutdown(drainCtx)
	w.front.shutdown(drainCtx)
	_ = endpoints.Shutdown(drainCtx)
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// ready: the model is loaded, the waypoint is declared and its certificate is held.
func (w *Waypoint) ready() error {
	if !w.store.Synced() {
		return errors.New("mesh model not loaded")
	}
	if w.store.Load().Waypoint(w.ref) == nil {
		return fmt.Errorf("waypoint %s is not declared in the model", w.ref)
	}
	if !w.ident.Ready() {
		if st, ok := w.ident.(interface{ Status() string }); ok && st.Status() != "" {
			return fmt.Errorf("certificate of %s: %s", w.self, st.Status())
		}
		return errors.New("certificate not issued yet")
	}
	return nil
}

// Close releases everything; idempotent.
func (w *Waypoint) Close() error {
	w.closeOnce.Do(func() {
		_ = w.server.Close()
		_ = w.pool.Close()
		w.front.close()
		if w.fast != nil {
			w.fast.pool.close()
		}
		w.clusters.close()
		if c, ok := w.ident.(interface{ Close() error }); ok {
			_ = c.Close()
		}
	})
	return nil
}

// target is a destination bound to this waypoint, as the CONNECT authority named it.
type target struct {
	authority netip.AddrPort
	svc       *discovery.Service     // service-addressed traffic
	port      *discovery.ServicePort // of svc
	workload  *discovery.Workload    // workload-addressed traffic
}

var (
	errNotBound  = errors.New("destination is not bound to this waypoint")
	errNoPort    = errors.New("service has no such port")
	errNoBackend = errors.New("no endpoint")
	// errDial marks a failure to connect to an endpoint (retried on another one).
	errDial = errors.New("upstream connect failure")
)

// resolve finds the bound destination the authority names: a Service VIP (routes
// are chosen by it, never by the Host header) or a workload address.
func (w *Waypoint) resolve(snap *discovery.Snapshot, authority netip.AddrPort) (target, error) {
	t := target{authority: authority}
	if svc, port := snap.ServiceByVIP(authority.Addr(), authority.Port()); svc != nil {
		if svc.Waypoint != w.ref {
			return t, fmt.Errorf("service %s/%s: %w", svc.Namespace, svc.Name, errNotBound)
		}
		if port == nil {
			return t, fmt.Errorf("service %s/%s port %d: %w", svc.Namespace, svc.Name, authority.Port(), errNoPort)
		}
		t.svc, t.port = svc, port
		return t, nil
	}
	if wl := snap.WorkloadByIP(authority.Addr()); wl != nil && wl.Waypoint == w.ref {
		t.workload = wl
		return t, nil
	}
	return t, fmt.Errorf("%s: %w", authority, errNotBound)
}

// clientAddr is the original client: the Forwarded address when it belongs to a
// workload with the peer's identity (the client's ztunnel vouches for its own pods),
// else the TCP peer.
func (w *Waypoint) clientAddr(snap *discovery.Snapshot, req *hbone.ConnectRequest) netip.AddrPort {
	if fwd := req.Forwarded; fwd.IsValid() {
		if wl := snap.WorkloadByIP(fwd.Addr()); wl != nil {
			if id, err := identity.WorkloadID(w.td, wl.Namespace, wl.ServiceAccount); err == nil && id == req.Peer {
				return fwd
			}
		}
	}
	if ta, ok := req.RemoteAddr.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

// upstream is one chosen endpoint of a Service, or a bound workload itself.
type upEndpoint struct {
	addr     netip.AddrPort // the endpoint: pod IP and target port
	workload *discovery.Workload
	// host and cluster are the Service endpoint's (nil for a bound workload itself).
	host    *upstream.Host
	cluster *upstream.Cluster
}

// dialUpstream connects to up on behalf of client: over HBONE with the waypoint's own
// identity to a mesh endpoint (its ztunnel delivers from the client's address, which
// it takes from a waypoint), plain TCP to one outside the mesh.
func (w *Waypoint) dialUpstream(ctx context.Context, up upEndpoint, client netip.AddrPort) (net.Conn, error) {
	if up.cluster == nil {
		return w.dialEndpoint(ctx, up, client)
	}
	lim := &up.cluster.Policy().Limits
	if lim.MaxConnections == upstream.Unlimited && lim.MaxPendingRequests == upstream.Unlimited {
		// No breaker to keep: the connection unwrapped, so the relay keeps its fast paths.
		if t := lim.ConnectTimeout; t > 0 && t < w.cfg.ConnectTimeout {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t)
			defer cancel()
		}
		return w.dialEndpoint(ctx, up, client)
	}
	// The cluster's connection and pending-request breakers: over either, the request
	// is refused at once (UO) rather than queued.
	releaseConn, err := up.cluster.OpenConn()
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", up.addr, err)
	}
	releasePending, err := up.cluster.StartPending()
	if err != nil {
		releaseConn()
		return nil, fmt.Errorf("dial upstream %s: %w", up.addr, err)
	}
	if t := lim.ConnectTimeout; t > 0 && t < w.cfg.ConnectTimeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	c, err := w.dialEndpoint(ctx, up, client)
	releasePending()
	if err != nil {
		releaseConn()
		return nil, err
	}
	return &limitedConn{Conn: c, release: releaseConn}, nil
}

// dialEndpoint is dialUpstream without the cluster's breakers.
func (w *Waypoint) dialEndpoint(ctx context.Context, up upEndpoint, client netip.AddrPort) (net.Conn, error) {
	if up.workload == nil || up.workload.Protocol != discovery.ProtocolHBONE || up.workload.Gateway != "" {
		c, err := w.dial(ctx, "tcp", up.addr.String())
		if err != nil {
			return nil, fmt.Errorf("dial upstream %s: %w: %w", up.addr, errDial, err)
		}
		return c, nil
	}
	dst, err := identity.WorkloadID(w.td, up.workload.Namespace, up.workload.ServiceAccount)
	if err != nil {
		return nil, err
	}
	c, err := w.pool.Dial(ctx, hbone.Request{
		Addr:      netip.AddrPortFrom(up.addr.Addr(), discovery.WaypointPort).String(),
		Authority: up.addr.String(),
		Src:       w.self,
		Dst:       dst,
		Forwarded: client,
	})
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s over HBONE: %w: %w", up.addr, errDial, err)
	}
	return c, nil
}
