package istiopolicy

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"go.uber.org/goleak"
)

// crds answers discovery as an API server would before and after the CRDs are installed.
type crds struct{ served atomic.Bool }

func (c *crds) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	if !c.served.Load() {
		return nil, apierrors.NewNotFound(schema.GroupResource{}, gv)
	}
	return &metav1.APIResourceList{GroupVersion: gv}, nil
}

// CRDs installed after the start are picked up without a restart: no policies until
// then, the cluster's policies and a change notification after.
func TestCRDsInstalledLater(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	client := istiofake.NewSimpleClientset(&securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-all", Namespace: "apps"},
	})
	disc := &crds{}
	src := New(client, disc, "", nil)
	src.poll = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer src.Shutdown()
	defer cancel()
	changed := make(chan struct{}, 16)
	served, err := src.Start(ctx, func() { changed <- struct{}{} })
	if err != nil || served {
		t.Fatalf("Start before the CRDs = %v, %v; want false, nil", served, err)
	}
	if set, probs, err := src.Policies(); set != nil || probs != nil || err != nil {
		t.Fatalf("Policies before the CRDs = %v, %v, %v; want none", set, probs, err)
	}
	disc.served.Store(true)
	// Events of the first list may come before the lists are complete; the source
	// reports a change once they are.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-changed:
		case <-deadline:
			t.Fatal("no policies after the CRDs appeared")
		}
		set, _, err := src.Policies()
		if err != nil {
			t.Fatal(err)
		}
		if set == nil {
			continue
		}
		if got := set.AuthorizationPolicies(); len(got) != 1 || got[0].Name != "deny-all" {
			t.Fatalf("policies after the CRDs appeared: %v, want apps/deny-all", got)
		}
		return
	}
}

// A shutdown while still waiting for the CRDs ends the wait.
func TestShutdownWhileWaiting(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	src := New(istiofake.NewSimpleClientset(), &crds{}, "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	if served, err := src.Start(ctx, func() {}); served || err != nil {
		t.Fatalf("Start = %v, %v", served, err)
	}
	cancel()
	src.Shutdown()
}

// Istio's fake clientset cannot answer a watch-list request (no initial-events
// bookmark), and its informers do not ask the client whether it can: list then watch.
func TestMain(m *testing.M) {
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}
