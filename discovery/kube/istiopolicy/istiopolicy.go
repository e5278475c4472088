// Package istiopolicy feeds Istio's PeerAuthentication and AuthorizationPolicy objects
// from the API server into the Kubernetes model source (kube.Config.Policies), compiled
// by package policy. It is the only part of the model source that links Istio's client.
package istiopolicy

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	securitylisters "istio.io/client-go/pkg/listers/security/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/ambitmesh/ambit/discovery/kube"
	"github.com/ambitmesh/ambit/policy"
)

// securityGroupVersion is where Istio serves the policy CRDs.
const securityGroupVersion = "security.istio.io/v1"

// crdPollInterval is how often a cluster without the CRDs is asked again: installing
// them later takes effect without restarting ztunnel.
const crdPollInterval = 10 * time.Second

// Source watches Istio's PeerAuthentication and AuthorizationPolicy objects and
// compiles them, again only when one changed. It implements kube.PolicySource.
type Source struct {
	root   string
	client istioclient.Interface
	disc   discoverer
	log    *slog.Logger
	poll   time.Duration
	wg     sync.WaitGroup // the goroutine waiting for the CRDs

	mu      sync.Mutex // guards the watch, which may start late
	factory istioinformers.SharedInformerFactory
	authz   securitylisters.AuthorizationPolicyLister
	peer    securitylisters.PeerAuthenticationLister

	// The last compilation, keyed by every object's resource version.
	key      string
	set      *policy.Set
	problems []kube.Problem
}

// discoverer is what New needs of the discovery client.
type discoverer interface {
	ServerResourcesForGroupVersion(string) (*metav1.APIResourceList, error)
}

// New returns a source of the policies in client's cluster; root is the root
// namespace (policy.DefaultRootNamespace when empty). disc (the Kubernetes
// client's Discovery()) tells whether the CRDs are served.
func New(client istioclient.Interface, disc discoverer, root string, log *slog.Logger) *Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{root: root, client: client, disc: disc, log: log, poll: crdPollInterval}
}

// Start watches the policies and waits for the first lists, calling onChange on
// every change after that. When the API server does not serve security.istio.io/v1
// it reports false and asks again every poll interval until ctx ends; once the CRDs
// are served it watches them and calls onChange.
func (p *Source) Start(ctx context.Context, onChange func()) (bool, error) {
	return kube.LateAPI{Interval: p.poll, Log: p.log, Served: p.served,
		Watch:          func(ctx context.Context) error { return p.watch(ctx, onChange) },
		DiscoverFailed: msgDiscoverFailed, WatchFailed: msgWatchFailed,
		ServedMsg: msgCRDsServed, ServedAttrs: []any{keyGroupVersion, securityGroupVersion},
	}.Start(ctx, &p.wg, onChange)
}

func (p *Source) served() (bool, error) {
	switch _, err := p.disc.ServerResourcesForGroupVersion(securityGroupVersion); {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("discover %s: %w", securityGroupVersion, err)
	}
	return true, nil
}

const (
	msgDiscoverFailed = "Istio security API discovery failed"
	msgWatchFailed    = "Istio security CRDs appeared but cannot be watched: no policies in force"
	msgCRDsServed     = "Istio security CRDs served: policies watched"
	keyError          = "error"
	keyGroupVersion   = "group_version"
)

// watch starts the informers and waits for their first lists.
func (p *Source) watch(ctx context.Context, onChange func()) error {
	factory := istioinformers.NewSharedInformerFactory(p.client, 0)
	sec := factory.Security().V1()
	ap, pa := sec.AuthorizationPolicies(), sec.PeerAuthentications()
	authz, peer := ap.Lister(), pa.Lister()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onChange() },
		UpdateFunc: func(_, _ any) { onChange() },
		DeleteFunc: func(any) { onChange() },
	}
	for name, inf := range map[string]cache.SharedIndexInformer{"authorizationpolicies": ap.Informer(), "peerauthentications": pa.Informer()} {
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
	p.authz, p.peer = authz, peer
	p.mu.Unlock()
	return nil
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

// Policies returns the policies in force and the objects that cannot be used.
// Before the CRDs are served there are none.
func (p *Source) Policies() (*policy.Set, []kube.Problem, error) {
	p.mu.Lock()
	authzList, peerList := p.authz, p.peer
	p.mu.Unlock()
	if authzList == nil {
		return nil, nil, nil
	}
	aps, err := authzList.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("list authorizationpolicies: %w", err)
	}
	pas, err := peerList.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("list peerauthentications: %w", err)
	}
	var key strings.Builder
	for _, a := range aps {
		fmt.Fprintf(&key, "a/%s/%s/%s\n", a.Namespace, a.Name, a.ResourceVersion)
	}
	for _, a := range pas {
		fmt.Fprintf(&key, "p/%s/%s/%s\n", a.Namespace, a.Name, a.ResourceVersion)
	}
	k := key.String()
	if p.set != nil && k == p.key {
		return p.set, p.problems, nil
	}
	// Oldest first, as Istio orders objects of equal precedence.
	slices.SortFunc(aps, func(a, b *securityv1.AuthorizationPolicy) int {
		return compareAge(a.CreationTimestamp.Time, b.CreationTimestamp.Time, a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	slices.SortFunc(pas, func(a, b *securityv1.PeerAuthentication) int {
		return compareAge(a.CreationTimestamp.Time, b.CreationTimestamp.Time, a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	var authz []*policy.Authorization
	var peer []*policy.PeerAuthentication
	var probs []kube.Problem
	for i, a := range aps {
		c := policy.CompileAuthorization(objectOf(a.Namespace, a.Name, a.CreationTimestamp.Time, i, a.Annotations), &a.Spec)
		authz = append(authz, c)
		if c.Invalid != nil {
			probs = append(probs, kube.Problem{Kind: policy.KindAuthorization, Namespace: a.Namespace, Name: a.Name, Reason: oneLine(c.Invalid)})
		}
	}
	for i, a := range pas {
		c := policy.CompilePeerAuthentication(objectOf(a.Namespace, a.Name, a.CreationTimestamp.Time, i, a.Annotations), &a.Spec)
		peer = append(peer, c)
		if c.Invalid != nil {
			probs = append(probs, kube.Problem{Kind: policy.KindPeerAuth, Namespace: a.Namespace, Name: a.Name, Reason: oneLine(c.Invalid)})
		}
	}
	p.key, p.set, p.problems = k, policy.NewSet(p.root, authz, peer), probs
	return p.set, p.problems, nil
}

func objectOf(ns, name string, created time.Time, seq int, ann map[string]string) policy.Object {
	return policy.Object{Meta: policy.Meta{Namespace: ns, Name: name, Created: created, Seq: seq}, Annotations: ann}
}

func compareAge(a, b time.Time, aRef, bRef string) int {
	return cmp.Or(a.Compare(b), strings.Compare(aRef, bRef))
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
