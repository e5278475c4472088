package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/policy"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

// Defaults for Config.
const (
	DefaultClusterDomain = discovery.DefaultDomainSuffix
	DefaultDebounce      = 100 * time.Millisecond
)

// Config configures a Source.
type Config struct {
	Client kubernetes.Interface
	// Metadata, when set, watches the Nodes' metadata (their topology labels become
	// the localities of the nodes and of their pods). The nodes' specs and statuses,
	// most of a Node's size, are never fetched.
	Metadata metadata.Interface
	// Policies, when set, feeds Istio's PeerAuthentications and
	// AuthorizationPolicies into the model (package istiopolicy).
	Policies PolicySource
	// Gateways, when set, feeds the Gateway API's waypoints and routes into the
	// model (package gatewayapi).
	Gateways GatewaySource
	// Traffic, when set, feeds Istio's DestinationRules into the model (package
	// istiotraffic); the waypoints compile them.
	Traffic TrafficSource
	// Options are the enrollment labels (unset fields take
	// EnrollmentOptions.WithDefaults).
	Options discovery.EnrollmentOptions
	// ClusterDomain makes service hostnames <name>.<ns>.svc.<domain>.
	// Default DefaultClusterDomain.
	ClusterDomain string
	Logger        *slog.Logger // default: discard
	// Debounce is the longest a change waits before it is published; the
	// changes within that window make one snapshot. Default DefaultDebounce.
	Debounce time.Duration
	// ResyncPeriod is the informers' resync period; 0 (the default) for none.
	// Resyncs do not rebuild the model.
	ResyncPeriod time.Duration
}

// PolicySource feeds compiled policies into the model.
type PolicySource interface {
	// Start watches and waits for the first lists, then calls onChange on every
	// change; served is false when the cluster has no policy API yet, in which case
	// the source keeps asking and calls onChange once it appears.
	Start(ctx context.Context, onChange func()) (served bool, err error)
	// Policies returns the policies in force and the objects that cannot be used.
	Policies() (*policy.Set, []Problem, error)
	// Shutdown waits for the watches to end once Start's context has.
	Shutdown()
}

// GatewaySource feeds the Gateway API's waypoint-class Gateways and routes into
// the model. Start and Shutdown are as PolicySource's.
type GatewaySource interface {
	Start(ctx context.Context, onChange func()) (served bool, err error)
	// Gateways returns the declared waypoints, their problems and the routes.
	Gateways() (Gateways, error)
	Shutdown()
}

// TrafficSource feeds Istio's DestinationRules into the model. Start and Shutdown
// are as PolicySource's.
type TrafficSource interface {
	Start(ctx context.Context, onChange func()) (served bool, err error)
	// DestinationRules returns the rules, oldest first, and those that cannot be
	// used (left out). The source owns the values: the model must not modify them.
	DestinationRules() ([]*networkingv1.DestinationRule, []Problem, error)
	Shutdown()
}

// Gateways is what a GatewaySource contributes to the model's Input. The source
// owns the values: the model must not modify them.
type Gateways struct {
	Waypoints []*discovery.Waypoint
	// Problems are Gateways of the waypoint class that declare nothing.
	Problems []string
	Routes   discovery.Routes
}

// Source keeps a discovery.Store in sync with the Kubernetes API.
type Source struct {
	cfg   Config
	log   *slog.Logger
	store *discovery.Store

	factory   informers.SharedInformerFactory
	meta      metadatainformer.SharedInformerFactory // nil: nodes not watched
	nodeList  cache.GenericLister
	nsList    corelisters.NamespaceLister
	podList   corelisters.PodLister
	svcList   corelisters.ServiceLister
	sliceList discoverylisters.EndpointSliceLister
	policies  PolicySource  // nil: no policies watched
	gateways  GatewaySource // nil: no waypoints or routes
	traffic   TrafficSource // nil: no DestinationRules

	changed chan struct{} // capacity 1: a change is pending
	running atomic.Bool
	synced  atomic.Bool

	mu       sync.Mutex
	problems map[Problem]time.Time // key (Since zero) -> first seen

	// Owned by Run's goroutine.
	published *discovery.Input
	lastErr   string
}

// ErrRunTwice is returned by a second call to Run.
var ErrRunTwice = errors.New("kube source: Run called more than once")

// New checks cfg and sets up the informers; Run starts them.
func New(cfg Config, store *discovery.Store) (*Source, error) {
	if cfg.Client == nil {
		return nil, errors.New("kube source: client is nil")
	}
	if store == nil {
		return nil, errors.New("kube source: store is nil")
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = DefaultClusterDomain
	}
	cfg.ClusterDomain = strings.TrimSuffix(cfg.ClusterDomain, ".")
	if errs := validation.IsDNS1123Subdomain(cfg.ClusterDomain); len(errs) > 0 {
		return nil, fmt.Errorf("kube source: cluster domain %q: %s", cfg.ClusterDomain, strings.Join(errs, "; "))
	}
	cfg.Options = cfg.Options.WithDefaults()
	if err := checkOptions(cfg.Options); err != nil {
		return nil, err
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.ResyncPeriod < 0 {
		cfg.ResyncPeriod = 0
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{
		cfg:      cfg,
		log:      log,
		store:    store,
		changed:  make(chan struct{}, 1),
		problems: make(map[Problem]time.Time),
	}
	s.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.ResyncPeriod, informers.WithTransform(transform))
	core := s.factory.Core().V1()
	ns, pods, svcs := core.Namespaces(), core.Pods(), core.Services()
	sls := s.factory.Discovery().V1().EndpointSlices()
	s.nsList, s.podList, s.svcList, s.sliceList = ns.Lister(), pods.Lister(), svcs.Lister(), sls.Lister()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.notify() },
		UpdateFunc: func(oldObj, newObj any) {
			if sameVersion(oldObj, newObj) {
				return // a resync, not a change
			}
			s.notify()
		},
		DeleteFunc: func(any) { s.notify() },
	}
	for name, inf := range map[string]cache.SharedIndexInformer{
		"namespaces": ns.Informer(), "pods": pods.Informer(), "services": svcs.Informer(), "endpointslices": sls.Informer(),
	} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("kube source: watch %s: %w", name, err)
		}
	}
	if cfg.Metadata != nil {
		s.meta = metadatainformer.NewSharedInformerFactoryWithOptions(cfg.Metadata, cfg.ResyncPeriod, metadatainformer.WithTransform(transformNode))
		nodes := s.meta.ForResource(corev1.SchemeGroupVersion.WithResource("nodes"))
		s.nodeList = nodes.Lister()
		nodeHandler := handler
		// Nodes' statuses change all the time; only their topology labels (all the
		// transform keeps) matter here.
		nodeHandler.UpdateFunc = func(oldObj, newObj any) {
			o, ok1 := oldObj.(*metav1.PartialObjectMetadata)
			n, ok2 := newObj.(*metav1.PartialObjectMetadata)
			if ok1 && ok2 && maps.Equal(o.Labels, n.Labels) {
				return
			}
			s.notify()
		}
		if _, err := nodes.Informer().AddEventHandler(nodeHandler); err != nil {
			return nil, fmt.Errorf("kube source: watch nodes: %w", err)
		}
	}
	s.policies = cfg.Policies
	s.gateways = cfg.Gateways
	s.traffic = cfg.Traffic
	return s, nil
}

func checkOptions(o discovery.EnrollmentOptions) error {
	var errs []string
	for _, k := range []string{o.NamespaceLabel, o.PodLabel} {
		for _, e := range validation.IsQualifiedName(k) {
			errs = append(errs, fmt.Sprintf("label key %q: %s", k, e))
		}
	}
	for _, v := range []string{o.EnrollValue, o.OptOutValue} {
		for _, e := range validation.IsValidLabelValue(v) {
			errs = append(errs, fmt.Sprintf("label value %q: %s", v, e))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("kube source: enrollment options: %s", strings.Join(errs, "; "))
	}
	return nil
}

func sameVersion(a, b any) bool {
	type versioned interface{ GetResourceVersion() string }
	av, ok1 := a.(versioned)
	bv, ok2 := b.(versioned)
	// Fake clients leave resourceVersion empty: treat that as a change.
	return ok1 && ok2 && av.GetResourceVersion() != "" && av.GetResourceVersion() == bv.GetResourceVersion()
}

func (s *Source) notify() {
	select {
	case s.changed <- struct{}{}:
	default: // already pending
	}
}

// Run starts the informers, waits for their caches to sync, publishes the
// first snapshot (Synced turns true), then publishes a new one after each
// burst of changes, until ctx is done; it returns nil then. A change waits at
// most Config.Debounce, so constant churn still yields regular snapshots. A
// rebuild that gives the same model is not published. client-go retries
// lists and watches on its own, so API server outages only delay updates;
// the last model stays in the store meanwhile.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunTwice
	}
	ctx, cancel := context.WithCancel(ctx)
	defer s.factory.Shutdown() // waits for the informers' goroutines, after cancel
	if s.meta != nil {
		defer s.meta.Shutdown()
	}
	defer cancel()
	s.factory.Start(ctx.Done())
	if s.meta != nil {
		s.meta.Start(ctx.Done())
	}
	if ok, err := s.waitForCaches(ctx); !ok {
		return err
	}
	if s.policies != nil {
		defer s.policies.Shutdown()
		served, err := s.policies.Start(ctx, s.notify)
		switch {
		case err != nil:
			return fmt.Errorf("kube source: policies: %w", err)
		case ctx.Err() != nil:
			return nil
		case !served:
			s.log.Warn("Istio security CRDs not served yet: no PeerAuthentication or AuthorizationPolicy in force until they are installed (the chart's istioCRDs.install)")
		}
	}
	if s.gateways != nil {
		defer s.gateways.Shutdown()
		served, err := s.gateways.Start(ctx, s.notify)
		switch {
		case err != nil:
			return fmt.Errorf("kube source: gateways: %w", err)
		case ctx.Err() != nil:
			return nil
		case !served:
			s.log.Warn("Gateway API CRDs not served yet: no waypoints until they are installed (the chart's gatewayAPICRDs.install); traffic bound to a waypoint is refused")
		}
	}
	if s.traffic != nil {
		defer s.traffic.Shutdown()
		served, err := s.traffic.Start(ctx, s.notify)
		switch {
		case err != nil:
			return fmt.Errorf("kube source: destination rules: %w", err)
		case ctx.Err() != nil:
			return nil
		case !served:
			s.log.Warn("Istio DestinationRule CRD not served yet: no DestinationRules in force until it is installed (the chart's istioCRDs.install)")
		}
	}
	s.log.Info("kube caches synced")
	// The events of the initial lists are in the snapshot about to be built.
	select {
	case <-s.changed:
	default:
	}
	timer := time.NewTimer(s.cfg.Debounce)
	timer.Stop()
	defer timer.Stop()
	pending := false
	// A failed build is retried even without a new change, so that a model
	// Build keeps refusing cannot leave the source unsynced for good.
	retry := func() {
		if !s.rebuild() {
			pending = true
			timer.Reset(max(s.cfg.Debounce, retryAfterFailure))
		}
	}
	retry()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
			if !pending {
				pending = true
				timer.Reset(s.cfg.Debounce)
			}
		case <-timer.C:
			pending = false
			retry()
		}
	}
}

// waitForCaches waits for the informers' first lists: false with a nil error when
// ctx ended first.
func (s *Source) waitForCaches(ctx context.Context) (bool, error) {
	failed := func(what any) (bool, error) {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, fmt.Errorf("kube source: sync %v cache", what)
	}
	for typ, ok := range s.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return failed(typ)
		}
	}
	if s.meta != nil {
		for gvr, ok := range s.meta.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return failed(gvr.Resource)
			}
		}
	}
	return true, nil
}

// Synced reports whether the caches synced and the first snapshot from them
// was published (just after the store's first Set, so Store.Synced may turn
// true a moment earlier).
func (s *Source) Synced() bool { return s.synced.Load() }

// Problems returns the current problems, sorted by kind, namespace, name.
func (s *Source) Problems() []Problem {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Problem, 0, len(s.problems))
	for p, since := range s.problems {
		p.Since = since
		out = append(out, p)
	}
	slices.SortFunc(out, compareProblems)
	return out
}

// list reads the informer caches.
func (s *Source) list() (objects, error) {
	var o objects
	var err error
	if o.namespaces, err = s.nsList.List(labels.Everything()); err != nil {
		return o, fmt.Errorf("list namespaces: %w", err)
	}
	if o.pods, err = s.podList.List(labels.Everything()); err != nil {
		return o, fmt.Errorf("list pods: %w", err)
	}
	if o.services, err = s.svcList.List(labels.Everything()); err != nil {
		return o, fmt.Errorf("list services: %w", err)
	}
	if o.slices, err = s.sliceList.List(labels.Everything()); err != nil {
		return o, fmt.Errorf("list endpointslices: %w", err)
	}
	if s.policies != nil {
		if o.policies, o.policyProblems, err = s.policies.Policies(); err != nil {
			return o, err
		}
	}
	if s.gateways != nil {
		if o.gateways, err = s.gateways.Gateways(); err != nil {
			return o, err
		}
	}
	if s.nodeList != nil {
		nodes, err := s.nodeList.List(labels.Everything())
		if err != nil {
			return o, fmt.Errorf("list nodes: %w", err)
		}
		o.nodes = make([]*metav1.PartialObjectMetadata, 0, len(nodes))
		for _, n := range nodes {
			if m, ok := n.(*metav1.PartialObjectMetadata); ok {
				o.nodes = append(o.nodes, m)
			}
		}
	}
	if s.traffic != nil {
		if o.destinationRules, o.trafficProblems, err = s.traffic.DestinationRules(); err != nil {
			return o, err
		}
	}
	return o, nil
}

// retryAfterFailure is how soon a failed build is tried again.
const retryAfterFailure = 5 * time.Second

// rebuild builds and publishes the model from the caches, reporting whether
// it succeeded. On failure the previous snapshot stays and the error is
// logged once until it changes.
func (s *Source) rebuild() bool {
	objs, err := s.list()
	var res buildResult
	if err == nil {
		res, err = build(objs, s.cfg.Options, s.cfg.ClusterDomain)
	}
	if err != nil {
		if msg := err.Error(); msg != s.lastErr {
			s.lastErr = msg
			s.log.Error("build mesh model from kube; keeping the previous one", "err", err)
		}
		return false
	}
	s.lastErr = ""
	s.setProblems(res.problems, time.Now())
	if s.published != nil && reflect.DeepEqual(*s.published, res.in) {
		return true
	}
	s.published = &res.in
	s.store.Set(res.snap)
	if !s.synced.Swap(true) {
		s.log.Info("mesh model from kube published", "workloads", len(res.snap.Workloads), "services", len(res.snap.Services), "namespaces", len(res.snap.Namespaces))
	}
	return true
}

// setProblems replaces the problem set, keeping first-seen times and logging
// only what appeared or went away, so that a rebuild never repeats a line.
func (s *Source) setProblems(probs []Problem, now time.Time) {
	next := make(map[Problem]time.Time, len(probs))
	s.mu.Lock()
	for _, p := range probs {
		k := p.key()
		since, ok := s.problems[k]
		if !ok {
			since = now
			level := slog.LevelWarn
			if k.Reason == ReasonNoPodIP || k.Reason == ReasonWaypointNotReady {
				level = slog.LevelDebug // normal while a pod starts
			}
			s.log.Log(context.Background(), level, "kube object problem", "kind", k.Kind, "namespace", k.Namespace, "name", k.Name, "reason", k.Reason)
		}
		next[k] = since
	}
	for k := range s.problems {
		if _, ok := next[k]; !ok {
			s.log.Debug("kube object problem resolved", "kind", k.Kind, "namespace", k.Namespace, "name", k.Name, "reason", k.Reason)
		}
	}
	s.problems = next
	s.mu.Unlock()
}
