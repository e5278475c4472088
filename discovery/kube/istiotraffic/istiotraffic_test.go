package istiotraffic

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/ambitmesh/ambit/discovery/kube"
)

// crds answers discovery as an API server would before and after the CRD is
// installed; resources are what the group version serves once it is.
type crds struct {
	served    atomic.Bool
	resources []string
}

func (c *crds) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	if !c.served.Load() {
		return nil, apierrors.NewNotFound(schema.GroupResource{}, gv)
	}
	l := &metav1.APIResourceList{GroupVersion: gv}
	for _, r := range c.resources {
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: r})
	}
	return l, nil
}

// rule is a DestinationRule as the API server returns it.
func rule(ns, name, rv string, created time.Time, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1",
		"kind":       "DestinationRule",
		"metadata": map[string]any{
			"name": name, "namespace": ns, "resourceVersion": rv,
			"creationTimestamp": created.UTC().Format(time.RFC3339),
			"annotations":       map[string]any{lastApplied: `{"big":"copy"}`, "team": "a"},
			"managedFields":     []any{map[string]any{"manager": "kubectl", "operation": "Apply"}},
		},
		"spec": spec,
	}}
	return u
}

// noLeaks checks, after the test's other cleanups, that it left no goroutines.
func noLeaks(tb testing.TB) {
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	tb.Cleanup(func() { goleak.VerifyNone(tb, opts...) })
}

func fakeClient(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{destinationRules: "DestinationRuleList"}, objs...)
}

// waitFor calls DestinationRules after each change until cond holds.
func waitFor(tb testing.TB, src *Source, changed <-chan struct{}, what string, cond func([]string, []kube.Problem) bool) {
	tb.Helper()
	deadline := time.After(10 * time.Second)
	for {
		rules, probs, err := src.DestinationRules()
		if err != nil {
			tb.Fatal(err)
		}
		var names []string
		for _, r := range rules {
			names = append(names, r.Namespace+"/"+r.Name+" "+r.Spec.Host)
		}
		if cond(names, probs) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			tb.Fatalf("never %s; last %q, problems %+v", what, names, probs)
		}
	}
}

func start(tb testing.TB, client *dynamicfake.FakeDynamicClient, disc *crds) (*Source, <-chan struct{}, bool) {
	tb.Helper()
	src := New(client, disc, nil)
	src.poll = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(src.Shutdown)
	tb.Cleanup(cancel)
	changed := make(chan struct{}, 64)
	served, err := src.Start(ctx, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	return src, changed, served
}

// The rules come decoded, oldest first; a bad one is a Problem and the others still
// load; a change is seen.
func TestDestinationRules(t *testing.T) {
	noLeaks(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	client := fakeClient(
		rule("apps", "reviews", "3", t0.Add(time.Hour), map[string]any{"host": "reviews",
			"trafficPolicy": map[string]any{"outlierDetection": map[string]any{"interval": "1m", "consecutive5xxErrors": int64(3)}}}),
		rule("apps", "ratings", "2", t0, map[string]any{"host": "ratings"}),
		rule("apps", "bad", "4", t0, map[string]any{"host": "bad", "trafficPolicy": map[string]any{"loadBalancer": map[string]any{"simple": "FASTEST"}}}),
	)
	disc := &crds{resources: []string{"destinationrules"}}
	disc.served.Store(true)
	src, changed, served := start(t, client, disc)
	if !served {
		t.Fatal("Start: not served")
	}
	waitFor(t, src, changed, "listed", func(names []string, probs []kube.Problem) bool {
		return strings.Join(names, ",") == "apps/ratings ratings,apps/reviews reviews" && len(probs) == 1
	})
	rules, probs, _ := src.DestinationRules()
	if got := rules[1].Spec.TrafficPolicy.GetOutlierDetection().GetInterval().AsDuration(); got != time.Minute {
		t.Errorf("interval %v, want 1m (Go's duration form)", got)
	}
	if rules[1].ManagedFields != nil || rules[1].Annotations[lastApplied] != "" || rules[1].Annotations["team"] != "a" {
		t.Errorf("cached metadata not trimmed: %+v", rules[1].ObjectMeta)
	}
	want := kube.Problem{Kind: "DestinationRule", Namespace: "apps", Name: "bad",
		Reason: `left out: spec.trafficPolicy.loadBalancer.simple: "FASTEST" is not one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST`}
	if probs[0] != want {
		t.Errorf("problem %+v\nwant    %+v", probs[0], want)
	}

	// Fixing the bad one (a new resource version) brings it in.
	fixed := rule("apps", "bad", "5", t0, map[string]any{"host": "bad"})
	if _, err := client.Resource(destinationRules).Namespace("apps").Update(context.Background(), fixed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, changed, "fixed", func(names []string, probs []kube.Problem) bool {
		return strings.Join(names, ",") == "apps/bad bad,apps/ratings ratings,apps/reviews reviews" && len(probs) == 0
	})
}

// A CRD installed after the start is picked up without a restart: no rules until
// then, and a change notification after. A group served for other kinds only is not
// the CRD.
func TestCRDInstalledLater(t *testing.T) {
	noLeaks(t)
	client := fakeClient(rule("apps", "reviews", "1", time.Now(), map[string]any{"host": "reviews"}))
	disc := &crds{resources: []string{"virtualservices"}}
	disc.served.Store(true)
	src, changed, served := start(t, client, disc)
	if served {
		t.Fatal("Start with only VirtualServices served: served")
	}
	if rules, probs, err := src.DestinationRules(); rules != nil || probs != nil || err != nil {
		t.Fatalf("DestinationRules before the CRD = %v, %v, %v; want none", rules, probs, err)
	}
	disc.served.Store(false)
	disc.resources = []string{"virtualservices", "destinationrules"}
	disc.served.Store(true)
	waitFor(t, src, changed, "the CRD's rules", func(names []string, _ []kube.Problem) bool {
		return strings.Join(names, ",") == "apps/reviews reviews"
	})
}

// A shutdown while still waiting for the CRD ends the wait.
func TestShutdownWhileWaiting(t *testing.T) {
	noLeaks(t)
	src := New(fakeClient(), &crds{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	if served, err := src.Start(ctx, func() {}); served || err != nil {
		t.Fatalf("Start = %v, %v", served, err)
	}
	cancel()
	src.Shutdown()
}

// fakeClientsListThenWatch makes informers list then watch: the fake dynamic client
// cannot answer a watch-list request, and its informers would wait for the bookmark.
func fakeClientsListThenWatch() { os.Setenv("KUBE_FEATURE_WatchListClient", "false") }
