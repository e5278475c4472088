package gatewayapi

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
)

// apis answers discovery as an API server would with the given resources per group
// version (none: not served).
type apis struct {
	mu     sync.Mutex
	served map[string][]string
}

func (a *apis) set(gv string, resources ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.served == nil {
		a.served = map[string][]string{}
	}
	a.served[gv] = resources
}

func (a *apis) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rs, ok := a.served[gv]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{}, gv)
	}
	l := &metav1.APIResourceList{GroupVersion: gv}
	for _, r := range rs {
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: r})
	}
	return l, nil
}

func gateway(ns, name, class string, listeners ...gatewayv1.Listener) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: gatewayv1.ObjectName(class), Listeners: listeners},
	}
}

var hbone = gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: "HBONE"}

// newClient is a cluster with Gateway API objects: a waypoint, a Gateway of another
// class, a waypoint-class Gateway without the HBONE listener, a route, and grant (v1
// or v1beta1). They are created through the client: the fake's constructor files
// Gateways under the wrong version.
func newClient(t *testing.T, betaGrant bool) *gwfake.Clientset {
	t.Helper()
	c := gwfake.NewSimpleClientset() // NewClientset has no type converter for these kinds
	ctx := context.Background()
	for _, g := range []*gatewayv1.Gateway{
		gateway("apps", "wp", discovery.DefaultWaypointClass, hbone),
		gateway("apps", "ingress", "other", gatewayv1.Listener{Name: "http", Port: 80, Protocol: "HTTP"}),
		gateway("apps", "broken", discovery.DefaultWaypointClass, gatewayv1.Listener{Name: "http", Port: 80, Protocol: "HTTP"}),
	} {
		if _, err := c.GatewayV1().Gateways(g.Namespace).Create(ctx, g, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.GatewayV1().HTTPRoutes("apps").Create(ctx, &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "r"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GatewayV1().GRPCRoutes("apps").Create(ctx, &gatewayv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "g"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grant := metav1.ObjectMeta{Namespace: "other", Name: "g"}
	var err error
	if betaGrant {
		_, err = c.GatewayV1beta1().ReferenceGrants("other").Create(ctx, &gatewayv1beta1.ReferenceGrant{ObjectMeta: grant}, metav1.CreateOptions{})
	} else {
		_, err = c.GatewayV1().ReferenceGrants("other").Create(ctx, &gatewayv1.ReferenceGrant{ObjectMeta: grant}, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs src until cleanup and returns the change notifications.
func start(t *testing.T, src *Source) (bool, <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan struct{}, 64)
	served, err := src.Start(ctx, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	t.Cleanup(func() { cancel(); src.Shutdown() })
	if err != nil {
		t.Fatal(err)
	}
	return served, changed
}

// waitGateways waits until cond holds of src.Gateways().
func waitGateways(t *testing.T, src *Source, changed <-chan struct{}, cond func(kube.Gateways) bool) kube.Gateways {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		g, err := src.Gateways()
		if err != nil {
			t.Fatal(err)
		}
		if cond(g) {
			return g
		}
		select {
		case <-changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("gateways: %+v", g)
		}
	}
}

// Gateways of the waypoint class become waypoints (one that cannot be is a problem),
// others are left alone; routes and grants are read when asked for, from v1 or, on
// older installs, v1beta1; an unchanged cluster gives the same values.
func TestGateways(t *testing.T) {
	noLeaks(t)
	tests := []struct {
		name       string
		routes     bool
		gvs        map[string][]string
		wantRoutes int
		wantGRPC   int
		wantGrants int
		betaGrant  bool
	}{
		{"ztunnel: gateways only", false, map[string][]string{groupVersionV1: {"gateways", "httproutes", "grpcroutes", "referencegrants"}}, 0, 0, 0, false},
		{"waypoint: v1 grants", true, map[string][]string{groupVersionV1: {"gateways", "httproutes", "grpcroutes", "referencegrants"}}, 1, 1, 1, false},
		{"waypoint: v1beta1 grants", true, map[string][]string{groupVersionV1: {"gateways", "httproutes"}, groupVersionV1beta1: {"referencegrants"}}, 1, 0, 1, true},
		{"waypoint: no routes served", true, map[string][]string{groupVersionV1: {"gateways"}}, 0, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disc := &apis{}
			for gv, rs := range tt.gvs {
				disc.set(gv, rs...)
			}
			src := New(newClient(t, tt.betaGrant), disc, Config{Routes: tt.routes})
			served, _ := start(t, src)
			if !served {
				t.Fatal("Start: not served")
			}
			g, err := src.Gateways()
			if err != nil {
				t.Fatal(err)
			}
			if len(g.Waypoints) != 1 || g.Waypoints[0].Ref() != "apps/wp" || g.Waypoints[0].For != "" {
				t.Errorf("waypoints %+v, want apps/wp", g.Waypoints)
			}
			if len(g.Problems) != 1 {
				t.Errorf("problems %q, want apps/broken's", g.Problems)
			}
			if len(g.Routes.HTTPRoutes) != tt.wantRoutes || len(g.Routes.GRPCRoutes) != tt.wantGRPC || len(g.Routes.ReferenceGrants) != tt.wantGrants {
				t.Errorf("routes %d, grpc routes %d, grants %d; want %d, %d, %d", len(g.Routes.HTTPRoutes), len(g.Routes.GRPCRoutes),
					len(g.Routes.ReferenceGrants), tt.wantRoutes, tt.wantGRPC, tt.wantGrants)
			}
			again, _ := src.Gateways()
			if len(g.Waypoints) > 0 && again.Waypoints[0] != g.Waypoints[0] {
				t.Error("an unchanged cluster gave new values")
			}
		})
	}
}

// CRDs installed after the start are picked up without a restart; changes follow live.
func TestCRDsInstalledLater(t *testing.T) {
	noLeaks(t)
	client := newClient(t, false)
	disc := &apis{}
	src := New(client, disc, Config{Routes: true})
	src.poll = 10 * time.Millisecond
	served, changed := start(t, src)
	if served {
		t.Fatal("Start before the CRDs: served")
	}
	if g, err := src.Gateways(); err != nil || len(g.Waypoints) != 0 {
		t.Fatalf("before the CRDs: %+v, %v; want none", g, err)
	}
	disc.set(groupVersionV1, "gateways", "httproutes", "referencegrants")
	waitGateways(t, src, changed, func(g kube.Gateways) bool { return len(g.Waypoints) == 1 && len(g.Routes.HTTPRoutes) == 1 })

	wp := gateway("apps", "wp2", discovery.DefaultWaypointClass, hbone)
	wp.Labels = map[string]string{discovery.LabelWaypointFor: "all"}
	if _, err := client.GatewayV1().Gateways("apps").Create(context.Background(), wp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	g := waitGateways(t, src, changed, func(g kube.Gateways) bool { return len(g.Waypoints) == 2 })
	if g.Waypoints[1].Ref() != "apps/wp2" || g.Waypoints[1].For != discovery.WaypointForAll {
		t.Errorf("new waypoint %+v", g.Waypoints[1])
	}
	if err := client.GatewayV1().Gateways("apps").Delete(context.Background(), "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGateways(t, src, changed, func(g kube.Gateways) bool { return len(g.Waypoints) == 1 && g.Waypoints[0].Name == "wp2" })
}

// noLeaks checks, after every other cleanup, that the test left no goroutines behind.
func noLeaks(t *testing.T) {
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
}

// A fake clientset cannot answer a watch-list request (no initial-events bookmark).
func TestMain(m *testing.M) {
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}
