package istiotraffic

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
	"github.com/ambitmesh/ambit/tests/background"
	kubetest "github.com/ambitmesh/ambit/tests/kube"
)

// istioCRD returns the CustomResourceDefinition called name from the istio.io/api
// module go.mod names: the one the chart installs.
func istioCRD(tb testing.TB, name string) *unstructured.Unstructured {
	tb.Helper()
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		tb.Fatalf("go list istio.io/api: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			tb.Fatalf("istio.io/api has no CRD %s", name)
		}
		if err != nil {
			tb.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			tb.Fatal(err)
		}
		if u.GetName() == name {
			return u
		}
	}
}

// waypointClient is a client of a service account with the chart's ambit-waypoint
// access to DestinationRules and the core objects (get, list, watch).
func waypointClient(tb testing.TB, c *kubetest.Cluster) (kubernetes.Interface, dynamic.Interface) {
	tb.Helper()
	ctx := context.Background()
	read := []string{"get", "list", "watch"}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint-test"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "services", "nodes"}, Verbs: read},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
			{APIGroups: []string{discovery.NetworkingGroup}, Resources: []string{"destinationrules"}, Verbs: read},
		},
	}
	admin := c.Client()
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint-test"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "apps", Name: "waypoint"}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	token, err := c.ServiceAccountToken(ctx, "apps", "waypoint", "", 0)
	if err != nil {
		tb.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(c.TokenConfig(token))
	if err != nil {
		tb.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.TokenConfig(token))
	if err != nil {
		tb.Fatal(err)
	}
	return cs, dyn
}

// TestAPIServerDestinationRules: on a real kube-apiserver, the CRD installed after the
// model source started is picked up, and DestinationRules created, changed and deleted
// after that reach the model.
func TestAPIServerDestinationRules(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (private network namespace)")
	}
	if binariesErr != nil {
		t.Fatalf("kube test binaries: %v", binariesErr)
	}
	c := kubetest.StartForTest(t, context.Background(), kubetest.Options{})
	ctx := context.Background()
	admin := c.Client()
	adminDyn, err := dynamic.NewForConfig(c.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cs, dyn := waypointClient(t, c)
	log := slog.New(slog.NewTextHandler(tbWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	traffic := New(dyn, cs.Discovery(), log)
	traffic.poll = 50 * time.Millisecond // the test waits for it, asserts nothing on it
	store := discovery.NewStore()
	src, err := kube.New(kube.Config{Client: cs, Traffic: traffic, Logger: log}, store)
	if err != nil {
		t.Fatal(err)
	}
	background.Run(t, src.Run)
	waitModel(t, store, "synced without the CRD", func(s *discovery.Snapshot) bool { return len(s.DestinationRules) == 0 })

	crds := adminDyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if _, err := crds.Create(ctx, istioCRD(t, "destinationrules.networking.istio.io"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rules := func(ns string) dynamic.ResourceInterface { return adminDyn.Resource(destinationRules).Namespace(ns) }
	dr := rule("apps", "reviews", "", time.Time{}, map[string]any{
		"host":          "reviews",
		"trafficPolicy": map[string]any{"outlierDetection": map[string]any{"consecutive5xxErrors": int64(3), "interval": "1m"}},
	})
	unstructured.RemoveNestedField(dr.Object, "metadata", "resourceVersion")
	unstructured.RemoveNestedField(dr.Object, "metadata", "creationTimestamp")
	// The CRD takes a moment to be served after its creation.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		_, err := rules("apps").Create(ctx, dr, metav1.CreateOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			t.Fatalf("create DestinationRule apps/reviews: %v", err)
		}
	}
	interval := func(s *discovery.Snapshot) time.Duration {
		if len(s.DestinationRules) != 1 {
			return -1
		}
		return s.DestinationRules[0].Spec.TrafficPolicy.GetOutlierDetection().GetInterval().AsDuration()
	}
	s := waitModel(t, store, "apps/reviews", func(s *discovery.Snapshot) bool { return interval(s) == time.Minute })
	if got := s.DestinationRules[0]; got.Namespace != "apps" || got.Name != "reviews" || got.Spec.Host != "reviews" || got.ManagedFields != nil {
		t.Errorf("DestinationRule %+v", got)
	}

	cur, err := rules("apps").Get(ctx, "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(cur.Object, "2m", "spec", "trafficPolicy", "outlierDetection", "interval"); err != nil {
		t.Fatal(err)
	}
	if _, err := rules("apps").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, store, "apps/reviews changed", func(s *discovery.Snapshot) bool { return interval(s) == 2*time.Minute })

	if err := rules("apps").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, store, "apps/reviews deleted", func(s *discovery.Snapshot) bool { return len(s.DestinationRules) == 0 })
	if probs := src.Problems(); len(probs) != 0 {
		t.Errorf("problems: %+v", probs)
	}
}

// waitModel waits until cond holds for the store's snapshot.
func waitModel(tb testing.TB, store *discovery.Store, what string, cond func(*discovery.Snapshot) bool) *discovery.Snapshot {
	tb.Helper()
	ch, cancel := store.Watch()
	defer cancel()
	timeout := time.NewTimer(time.Minute) // only guards against hangs
	defer timeout.Stop()
	for {
		s := store.Load()
		if store.Synced() && cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-timeout.C:
			tb.Fatalf("model never satisfied %q; last: version %d, DestinationRules %v", what, s.Version, s.DestinationRules)
		}
	}
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) { w.tb.Log(string(p)); return len(p), nil }
