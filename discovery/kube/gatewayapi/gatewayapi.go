// Package gatewayapi feeds the Gateway API's objects from the API server into the
// Kubernetes model source (kube.Config.Gateways): Gateways of the waypoint class
// become waypoints, and HTTPRoutes, GRPCRoutes and ReferenceGrants the routes the
// waypoints compile. It is the only part of the model source that links the Gateway API's
// client.
package gatewayapi

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
)

// Where the Gateway API serves the kinds read here. ReferenceGrant is v1 since
// v1.5; older installs serve it as v1beta1 only (the same schema).
const (
	groupVersionV1      = discovery.GatewayGroup + "/v1"
	groupVersionV1beta1 = discovery.GatewayGroup + "/v1beta1"
)

// crdPollInterval is how often a cluster without the CRDs is asked again:
// installing them later takes effect without a restart.
const crdPollInterval = 10 * time.Second

// Config configures a Source.
type Config struct {
	// Class is the waypoints' GatewayClass (discovery.DefaultWaypointClass when
	// empty); Gateways of other classes are left alone.
	Class string
	// Routes also watches HTTPRoutes, GRPCRoutes and ReferenceGrants (the
	// waypoint compiles them; ztunnel does not need them).
	Routes bool
	Logger *slog.Logger
}

// Source watches Gateways (and, with Config.Routes, HTTPRoutes, GRPCRoutes and
// ReferenceGrants). It implements kube.GatewaySource.
type Source struct {
	cfg    Config
	client gwclient.Interface
	disc   discoverer
	log    *slog.Logger
	poll   time.Duration
	wg     sync.WaitGroup // the goroutine waiting for the CRDs

	mu      sync.Mutex // guards the watch, which may start late
	factory gwinformers.SharedInformerFactory
	lists   *listers

	// The last result, keyed by every object's resource version.
	key  string
	last kube.Gateways
}

// listers read the caches; a nil func is a kind the cluster does not serve.
type listers struct {
	gateways func() ([]*gatewayv1.Gateway, error)
	routes   func() ([]*gatewayv1.HTTPRoute, error)
	grpc     func() ([]*gatewayv1.GRPCRoute, error)
	grants   func() ([]*gatewayv1.ReferenceGrant, error)
}

// discoverer is what New needs of the discovery client.
type discoverer interface {
	ServerResourcesForGroupVersion(string) (*metav1.APIResourceList, error)
}

// New returns a source of the Gateway API objects of client's cluster; disc
// (the Kubernetes client's Discovery()) tells which kinds are served.
func New(client gwclient.Interface, disc discoverer, cfg Config) *Source {
	if cfg.Class == "" {
		cfg.Class = discovery.DefaultWaypointClass
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, client: client, disc: disc, log: log, poll: crdPollInterval}
}

// served says which kinds the API server serves.
type served struct {
	routes   bool
	grpc     bool
	grants   string // "", groupVersionV1 or groupVersionV1beta1
	gateways bool
}

func (p *Source) discover() (served, error) {
	var s served
	v1, err := resources(p.disc, groupVersionV1)
	if err != nil {
		return s, err
	}
	s.gateways, s.routes, s.grpc = v1["gateways"], v1["httproutes"], v1["grpcroutes"]
	if v1["referencegrants"] {
		s.grants = groupVersionV1
	} else if p.cfg.Routes {
		beta, err := resources(p.disc, groupVersionV1beta1)
		if err != nil {
			return s, err
		}
		if beta["referencegrants"] {
			s.grants = groupVersionV1beta1
		}
	}
	return s, nil
}

// resources returns the resource names the API server serves in gv (none when
// it does not serve gv).
func resources(disc discoverer, gv string) (map[string]bool, error) {
	list, err := disc.ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("discover %s: %w", gv, err)
	}
	out := make(map[string]bool, len(list.APIResources))
	for _, r := range list.APIResources {
		out[r.Name] = true
	}
	return out, nil
}

// Start watches and waits for the first lists, calling onChange on every change
// after that. When the API server serves no Gateways it reports false and asks
// again every poll interval until ctx ends; once they are served it watches
// them and calls onChange.
func (p *Source) Start(ctx context.Context, onChange func()) (bool, error) {
	var last served // what the last discovery found, for the watch
	return kube.LateAPI{Interval: p.poll, Log: p.log,
		Served: func() (bool, error) {
			var err error
			last, err = p.discover()
			return last.gateways, err
		},
		Watch:          func(ctx context.Context) error { return p.watch(ctx, last, onChange) },
		DiscoverFailed: msgDiscoverFailed, WatchFailed: msgWatchFailed,
		ServedMsg: msgCRDsServed, ServedAttrs: []any{keyGroupVersion, groupVersionV1},
	}.Start(ctx, &p.wg, onChange)
}

const (
	msgDiscoverFailed = "Gateway API discovery failed"
	msgWatchFailed    = "Gateway API CRDs appeared but cannot be watched: no waypoints"
	msgCRDsServed     = "Gateway API CRDs served: waypoints watched"
	msgNoRoutes       = "Gateway API HTTPRoutes not served: waypoints route nothing"
	keyError          = "error"
	keyGroupVersion   = "group_version"
)

// watch starts the informers of the served kinds and waits for their first lists.
func (p *Source) watch(ctx context.Context, s served, onChange func()) error {
	factory := gwinformers.NewSharedInformerFactoryWithOptions(p.client, 0, gwinformers.WithTransform(trim))
	v1 := factory.Gateway().V1()
	gws := v1.Gateways()
	infs := map[string]cache.SharedIndexInformer{"gateways": gws.Informer()}
	l := &listers{gateways: func() ([]*gatewayv1.Gateway, error) { return gws.Lister().List(labels.Everything()) }}
	if p.cfg.Routes {
		if s.routes {
			hr := v1.HTTPRoutes()
			infs["httproutes"] = hr.Informer()
			l.routes = func() ([]*gatewayv1.HTTPRoute, error) { return hr.Lister().List(labels.Everything()) }
		} else {
			p.log.Warn(msgNoRoutes)
		}
		if s.grpc {
			gr := v1.GRPCRoutes()
			infs["grpcroutes"] = gr.Informer()
			l.grpc = func() ([]*gatewayv1.GRPCRoute, error) { return gr.Lister().List(labels.Everything()) }
		}
		switch s.grants {
		case groupVersionV1:
			rg := v1.ReferenceGrants()
			infs["referencegrants"] = rg.Informer()
			l.grants = func() ([]*gatewayv1.ReferenceGrant, error) { return rg.Lister().List(labels.Everything()) }
		case groupVersionV1beta1:
			rg := factory.Gateway().V1beta1().ReferenceGrants()
			infs["referencegrants"] = rg.Informer()
			l.grants = func() ([]*gatewayv1.ReferenceGrant, error) {
				beta, err := rg.Lister().List(labels.Everything())
				out := make([]*gatewayv1.ReferenceGrant, len(beta))
				for i, g := range beta {
					out[i] = (*gatewayv1.ReferenceGrant)(g)
				}
				return out, err
			}
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onChange() },
		UpdateFunc: func(_, _ any) { onChange() },
		DeleteFunc: func(any) { onChange() },
	}
	for name, inf := range infs {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watch %s: %w", name, err)
		}
	}
	p.mu.Lock()
	p.factory = factory
	p.mu.Unlock()
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok && ctx.Err() == nil {
			return fmt.Errorf("sync %v cache", typ)
		}
	}
	p.mu.Lock()
	p.lists = l
	p.mu.Unlock()
	return nil
}

// trim drops what no mapping reads before the informers cache an object; it
// returns a trimmed shallow copy and is idempotent, as client-go requires.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *gatewayv1.Gateway:
		c := *o
		c.ManagedFields, c.Annotations = nil, nil
		return &c, nil
	case *gatewayv1.HTTPRoute:
		c := *o
		c.ManagedFields, c.Annotations = nil, nil
		return &c, nil
	case *gatewayv1.GRPCRoute:
		c := *o
		c.ManagedFields, c.Annotations = nil, nil
		return &c, nil
	}
	return obj, nil
}

// Shutdown waits for the informers to end, after Start's context ended.
func (p *Source) Shutdown() {
	p.wg.Wait()
	p.mu.Lock()
	f := p.factory
	p.mu.Unlock()
	if f != nil {
		f.Shutdown()
	}
}

// Gateways returns the waypoints (sorted by namespace and name), the problems of
// the waypoint-class Gateways that declare nothing, and the routes (sorted). It
// returns the same values as long as no object changed. Before the CRDs are
// served there are none.
func (p *Source) Gateways() (kube.Gateways, error) {
	p.mu.Lock()
	l := p.lists
	p.mu.Unlock()
	if l == nil {
		return kube.Gateways{}, nil
	}
	gws, err := l.gateways()
	if err != nil {
		return kube.Gateways{}, fmt.Errorf("list gateways: %w", err)
	}
	var routes []*gatewayv1.HTTPRoute
	if l.routes != nil {
		if routes, err = l.routes(); err != nil {
			return kube.Gateways{}, fmt.Errorf("list httproutes: %w", err)
		}
	}
	var grpc []*gatewayv1.GRPCRoute
	if l.grpc != nil {
		if grpc, err = l.grpc(); err != nil {
			return kube.Gateways{}, fmt.Errorf("list grpcroutes: %w", err)
		}
	}
	var grants []*gatewayv1.ReferenceGrant
	if l.grants != nil {
		if grants, err = l.grants(); err != nil {
			return kube.Gateways{}, fmt.Errorf("list referencegrants: %w", err)
		}
	}
	slices.SortFunc(gws, func(a, b *gatewayv1.Gateway) int { return compareMeta(&a.ObjectMeta, &b.ObjectMeta) })
	slices.SortFunc(routes, func(a, b *gatewayv1.HTTPRoute) int { return compareMeta(&a.ObjectMeta, &b.ObjectMeta) })
	slices.SortFunc(grpc, func(a, b *gatewayv1.GRPCRoute) int { return compareMeta(&a.ObjectMeta, &b.ObjectMeta) })
	slices.SortFunc(grants, func(a, b *gatewayv1.ReferenceGrant) int { return compareMeta(&a.ObjectMeta, &b.ObjectMeta) })

	var key strings.Builder
	for _, g := range gws {
		fmt.Fprintf(&key, "g/%s/%s/%s\n", g.Namespace, g.Name, g.ResourceVersion)
	}
	for _, r := range routes {
		fmt.Fprintf(&key, "r/%s/%s/%s\n", r.Namespace, r.Name, r.ResourceVersion)
	}
	for _, r := range grpc {
		fmt.Fprintf(&key, "q/%s/%s/%s\n", r.Namespace, r.Name, r.ResourceVersion)
	}
	for _, g := range grants {
		fmt.Fprintf(&key, "t/%s/%s/%s\n", g.Namespace, g.Name, g.ResourceVersion)
	}
	k := key.String()
	if p.key != "" && k == p.key {
		return p.last, nil
	}
	out := kube.Gateways{Routes: discovery.Routes{HTTPRoutes: routes, GRPCRoutes: grpc, ReferenceGrants: grants}}
	for _, g := range gws {
		if string(g.Spec.GatewayClassName) != p.cfg.Class {
			continue
		}
		wp, err := discovery.WaypointOf(g)
		if err != nil {
			out.Problems = append(out.Problems, err.Error())
			continue
		}
		out.Waypoints = append(out.Waypoints, wp)
	}
	p.key, p.last = k, out
	return out, nil
}

func compareMeta(a, b *metav1.ObjectMeta) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}
