// Package istiotraffic feeds Istio's DestinationRules from the API server into the
// Kubernetes model source (kube.Config.Traffic), for the waypoints that compile them.
// They are watched through the dynamic client and decoded here, one by one and
// strictly (discovery.DecodeDestinationRule), so that an object Istio's typed client
// could not decode is one Problem instead of a list that never syncs.
package istiotraffic

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
)

// destinationRules is where Istio serves the DestinationRules (also at v1beta1 and
// v1alpha3, the same objects).
var destinationRules = schema.GroupVersionResource{Group: discovery.NetworkingGroup, Version: "v1", Resource: "destinationrules"}

// crdPollInterval is how often a cluster without the CRD is asked again: installing
// it later takes effect without restarting the waypoint.
const crdPollInterval = 10 * time.Second

// Source watches Istio's DestinationRules and decodes them, again only when one
// changed. It implements kube.TrafficSource.
type Source struct {
	client dynamic.Interface
	disc   discoverer
	log    *slog.Logger
	poll   time.Duration
	wg     sync.WaitGroup // the goroutine waiting for the CRD

	mu      sync.Mutex // guards the watch, which may start late, and the last result
	factory dynamicinformer.DynamicSharedInformerFactory
	cache   cache.Store // typed or, for those that cannot be decoded, unstructured objects

	// The last result, keyed by every object's resource version.
	key      string
	rules    []*networkingv1.DestinationRule
	problems []kube.Problem
}

// discoverer is what New needs of the discovery client.
type discoverer interface {
	ServerResourcesForGroupVersion(string) (*metav1.APIResourceList, error)
}

// New returns a source of the DestinationRules in client's cluster. disc (the
// Kubernetes client's Discovery()) tells whether the CRD is served.
func New(client dynamic.Interface, disc discoverer, log *slog.Logger) *Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{client: client, disc: disc, log: log, poll: crdPollInterval}
}

// Start watches the DestinationRules and waits for the first list, calling onChange
// on every change after that. When the API server does not serve them it reports
// false and asks again every poll interval until ctx ends; once they are served it
// watches them and calls onChange.
func (s *Source) Start(ctx context.Context, onChange func()) (bool, error) {
	return kube.LateAPI{Interval: s.poll, Log: s.log, Served: s.served,
		Watch:          func(ctx context.Context) error { return s.watch(ctx, onChange) },
		DiscoverFailed: msgDiscoverFailed, WatchFailed: msgWatchFailed,
		ServedMsg: msgCRDServed, ServedAttrs: []any{keyResource, destinationRules.GroupResource().String()},
	}.Start(ctx, &s.wg, onChange)
}

func (s *Source) served() (bool, error) {
	gv := destinationRules.GroupVersion().String()
	list, err := s.disc.ServerResourcesForGroupVersion(gv)
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("discover %s: %w", gv, err)
	}
	// The group may be served for other kinds (a VirtualService CRD alone).
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == destinationRules.Resource }), nil
}

const (
	msgDiscoverFailed = "Istio networking API discovery failed"
	msgWatchFailed    = "Istio DestinationRule CRD appeared but cannot be watched: no DestinationRules in force"
	msgCRDServed      = "Istio DestinationRule CRD served: DestinationRules watched"
	keyError          = "error"
	keyResource       = "resource"
)

// watch starts the informer and waits for its first list.
func (s *Source) watch(ctx context.Context, onChange func()) error {
	factory := dynamicinformer.NewDynamicSharedInformerFactory(s.client, 0)
	inf := factory.ForResource(destinationRules).Informer()
	if err := inf.SetTransform(transform); err != nil {
		return fmt.Errorf("watch %s: %w", destinationRules.Resource, err)
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onChange() },
		UpdateFunc: func(_, _ any) { onChange() },
		DeleteFunc: func(any) { onChange() },
	}
	if _, err := inf.AddEventHandler(handler); err != nil {
		return fmt.Errorf("watch %s: %w", destinationRules.Resource, err)
	}
	s.mu.Lock()
	s.factory = factory
	s.mu.Unlock()
	factory.Start(ctx.Done())
	for gvr, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok && ctx.Err() == nil {
			return fmt.Errorf("sync %s cache", gvr.Resource)
		}
	}
	s.mu.Lock()
	s.cache = inf.GetStore() // not gi.Lister(): it expects unstructured objects only
	s.mu.Unlock()
	return nil
}

// transform decodes each object as the informer receives it, so that the cache holds
// Istio's typed objects (smaller than unstructured ones, and decoded once). An object
// that cannot be decoded stays unstructured, trimmed, for DestinationRules to report.
// It is idempotent, as client-go requires.
func transform(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	if dr, err := decode(u); err == nil {
		dr.ManagedFields = nil
		delete(dr.Annotations, lastApplied)
		return dr, nil
	}
	u = u.DeepCopy()
	u.SetManagedFields(nil)
	ann := u.GetAnnotations()
	delete(ann, lastApplied)
	u.SetAnnotations(ann)
	return u, nil
}

// lastApplied is kubectl's copy of the whole object, which no one reads here.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

func decode(u *unstructured.Unstructured) (*networkingv1.DestinationRule, error) {
	data, err := json.Marshal(u.Object)
	if err != nil {
		return nil, err
	}
	return discovery.DecodeDestinationRule(data)
}

// Shutdown waits for the informer to end, after Start's context ended.
func (s *Source) Shutdown() {
	s.wg.Wait()
	s.mu.Lock()
	f := s.factory
	s.mu.Unlock()
	if f != nil {
		f.Shutdown()
	}
}

// DestinationRules returns the rules, oldest first (then by namespace and name: the
// order Istio gives rules of equal precedence), and those that cannot be decoded
// (left out). Before the CRD is served there are none. The error is always nil.
func (s *Source) DestinationRules() ([]*networkingv1.DestinationRule, []kube.Problem, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		return nil, nil, nil
	}
	objs := s.cache.List()
	metas := make([]metav1.Object, 0, len(objs))
	for _, o := range objs {
		if m, ok := o.(metav1.Object); ok {
			metas = append(metas, m)
		}
	}
	slices.SortFunc(metas, func(a, b metav1.Object) int {
		return cmp.Or(a.GetCreationTimestamp().Compare(b.GetCreationTimestamp().Time),
			strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
	})
	var key strings.Builder
	for _, m := range metas {
		fmt.Fprintf(&key, "%s/%s/%s\n", m.GetNamespace(), m.GetName(), m.GetResourceVersion())
	}
	if k := key.String(); k == s.key && s.rules != nil {
		return s.rules, s.problems, nil
	}
	rules := make([]*networkingv1.DestinationRule, 0, len(metas))
	var problems []kube.Problem
	for _, m := range metas {
		switch o := m.(type) {
		case *networkingv1.DestinationRule:
			rules = append(rules, o)
		case *unstructured.Unstructured:
			dr, err := decode(o)
			if err == nil {
				rules = append(rules, dr)
				continue
			}
			problems = append(problems, kube.Problem{
				Kind: discovery.KindDestinationRule, Namespace: o.GetNamespace(), Name: o.GetName(),
				Reason: "left out: " + strings.ReplaceAll(fmt.Sprint(err), "\n", "; "),
			})
		}
	}
	s.key, s.rules, s.problems = key.String(), rules, problems
	return rules, problems, nil
}
