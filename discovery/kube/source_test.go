package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/background"
)

// waitTimeout only guards against hangs; nothing asserts on timing.
const waitTimeout = 60 * time.Second

// noLeaks checks at cleanup that the test left no goroutines behind.
func noLeaks(tb testing.TB) {
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	tb.Cleanup(func() { goleak.VerifyNone(tb, opts...) })
}

// runSource starts a Source on client and stops it (checking Run's nil
// return) at cleanup.
func runSource(tb testing.TB, client kubernetes.Interface, cfg Config) (*Source, *discovery.Store) {
	tb.Helper()
	store := discovery.NewStore()
	cfg.Client = client
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	src, err := New(cfg, store)
	if err != nil {
		tb.Fatal(err)
	}
	background.Run(tb, src.Run)
	return src, store
}

// twoPods is a cluster with namespace ns (not enrolled) and its pods a
// (198.18.0.1) and b (198.18.0.2).
func twoPods() *fake.Clientset {
	return fake.NewClientset(
		newNamespace("ns", nil),
		newPod("ns", "a", []string{"198.18.0.1"}),
		newPod("ns", "b", []string{"198.18.0.2"}),
	)
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) { w.tb.Log(string(p)); return len(p), nil }

// waitModel waits until cond holds for the store's snapshot.
func waitModel(tb testing.TB, store *discovery.Store, what string, cond func(*discovery.Snapshot) bool) *discovery.Snapshot {
	tb.Helper()
	ch, cancel := store.Watch()
	defer cancel()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		s := store.Load()
		if store.Synced() && cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-timeout.C:
			tb.Fatalf("model never satisfied %q; last: version %d, workloads %+v, services %+v", what, s.Version, s.Workloads, s.Services)
		}
	}
}

func waitProblem(tb testing.TB, src *Source, store *discovery.Store, kind, name, prefix string) Problem {
	tb.Helper()
	var found Problem
	waitModel(tb, store, "problem on "+name, func(*discovery.Snapshot) bool {
		for _, p := range src.Problems() {
			if p.Kind == kind && p.Name == name && len(p.Reason) >= len(prefix) && p.Reason[:len(prefix)] == prefix {
				found = p
				return true
			}
		}
		return false
	})
	return found
}

func waitSynced(tb testing.TB, src *Source) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !src.Synced() {
		if time.Now().After(deadline) {
			tb.Fatal("the store has the model but Synced stays false")
		}
		time.Sleep(time.Millisecond)
	}
}

func enrolled(s *discovery.Snapshot, uid string) (bool, bool) {
	w := s.WorkloadByUID(uid)
	if w == nil {
		return false, false
	}
	return w.Enrolled, true
}

func TestSourceModel(t *testing.T) {
	noLeaks(t)
	client := fake.NewClientset(
		newNamespace("ns", nil),
		newPod("ns", "a", []string{"198.18.0.1"}),
		newPod("ns", "b", []string{"198.18.0.2"}),
		newPod("ns", "pending", nil),
		newPod("ns", "hostnet", []string{"198.18.0.250"}, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		newService("ns", "s", []string{"198.19.0.10"}, svcPort{name: "http", port: 80, target: intstr.FromString("web")}),
		newSlice("ns", "s-1", "s", []slicePort{{"http", 8080}}, sliceEP{addr: "198.18.0.1", pod: "a"}, sliceEP{addr: "198.18.0.2", pod: "b"}),
	)
	src, store := runSource(t, client, Config{ClusterDomain: "example.test."})
	snap := waitModel(t, store, "synced", func(*discovery.Snapshot) bool { return true })
	waitSynced(t, src) // turns true right after the first Set
	if len(snap.Workloads) != 2 || snap.WorkloadByIP(addrs("198.18.0.1")[0]) == nil || snap.WorkloadByIP(addrs("198.18.0.2")[0]) == nil {
		t.Errorf("workloads %+v", snap.Workloads)
	}
	svc, port := snap.ServiceByVIP(addrs("198.19.0.10")[0], 80)
	if svc == nil || port == nil || port.TargetPort != 8080 || len(svc.Endpoints) != 2 || svc.Hostname != "s.ns.svc.example.test" {
		t.Fatalf("service %+v port %+v", svc, port)
	}
	probs := src.Problems()
	if len(probs) != 1 || probs[0].Name != "pending" || probs[0].Reason != ReasonNoPodIP || probs[0].Since.IsZero() {
		t.Errorf("problems %+v", probs)
	}

	// The pending pod gets its IP: the problem goes, the workload comes.
	ctx := context.Background()
	p, err := client.CoreV1().Pods("ns").Get(ctx, "pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodIPs(p, []string{"198.18.0.3"})
	if _, err := client.CoreV1().Pods("ns").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, store, "pending pod has its IP", func(s *discovery.Snapshot) bool { return s.WorkloadByIP(addrs("198.18.0.3")[0]) != nil })
	if probs := src.Problems(); len(probs) != 0 {
		t.Errorf("problems after the pod got its IP: %+v", probs)
	}
}

func TestSourceEnrollmentLive(t *testing.T) {
	noLeaks(t)
	ctx := context.Background()
	client := twoPods()
	_, store := runSource(t, client, Config{})
	opts := discovery.EnrollmentOptions{}.WithDefaults()
	setNSLabels := func(l map[string]string) {
		t.Helper()
		ns, err := client.CoreV1().Namespaces().Get(ctx, "ns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels = l
		if _, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitModel(t, store, "not enrolled", func(s *discovery.Snapshot) bool {
		a, _ := enrolled(s, "uid-ns-a")
		b, ok := enrolled(s, "uid-ns-b")
		return ok && !a && !b
	})

	setNSLabels(map[string]string{opts.NamespaceLabel: opts.EnrollValue})
	s := waitModel(t, store, "namespace enrolled", func(s *discovery.Snapshot) bool {
		a, _ := enrolled(s, "uid-ns-a")
		b, _ := enrolled(s, "uid-ns-b")
		return a && b
	})
	if w := s.WorkloadByUID("uid-ns-a"); w.Protocol != discovery.ProtocolHBONE {
		t.Errorf("protocol %q", w.Protocol)
	}

	// Pod opt-out.
	b, err := client.CoreV1().Pods("ns").Get(ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b.Labels = map[string]string{opts.PodLabel: opts.OptOutValue}
	if _, err := client.CoreV1().Pods("ns").Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, store, "b opted out", func(s *discovery.Snapshot) bool {
		a, _ := enrolled(s, "uid-ns-a")
		b, _ := enrolled(s, "uid-ns-b")
		return a && !b
	})

	setNSLabels(nil)
	waitModel(t, store, "label removed", func(s *discovery.Snapshot) bool {
		a, ok := enrolled(s, "uid-ns-a")
		return ok && !a
	})
}

func TestSourceCustomLabels(t *testing.T) {
	noLeaks(t)
	client := fake.NewClientset(
		newNamespace("ns", map[string]string{"mesh.example/mode": "on"}),
		newPod("ns", "a", []string{"198.18.0.1"}),
		newPod("ns", "b", []string{"198.18.0.2"}, withLabels(map[string]string{"mesh.example/pod": "off"})),
	)
	_, store := runSource(t, client, Config{Options: discovery.EnrollmentOptions{
		NamespaceLabel: "mesh.example/mode", EnrollValue: "on", PodLabel: "mesh.example/pod", OptOutValue: "off",
	}})
	waitModel(t, store, "custom labels", func(s *discovery.Snapshot) bool {
		a, _ := enrolled(s, "uid-ns-a")
		b, ok := enrolled(s, "uid-ns-b")
		return a && ok && !b
	})
}

func TestSourceConflictAndDelete(t *testing.T) {
	noLeaks(t)
	ctx := context.Background()
	client := twoPods()
	src, store := runSource(t, client, Config{})
	waitModel(t, store, "two workloads", func(s *discovery.Snapshot) bool { return len(s.Workloads) == 2 })

	// A newer pod reusing a's IP wins; a is left out with a Problem.
	if _, err := client.CoreV1().Pods("ns").Create(ctx, newPod("ns", "c", []string{"198.18.0.1"}, withCreated(epoch.Add(time.Hour))), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := waitModel(t, store, "c owns the IP", func(s *discovery.Snapshot) bool {
		w := s.WorkloadByIP(addrs("198.18.0.1")[0])
		return w != nil && w.Name == "c"
	})
	if s.WorkloadByUID("uid-ns-a") != nil || s.WorkloadByUID("uid-ns-b") == nil {
		t.Errorf("workloads %+v", s.Workloads)
	}
	waitProblem(t, src, store, KindPod, "a", reasonLeftOut)

	// Deleting the old pod clears the conflict; deleting b removes it.
	for _, name := range []string{"a", "b"} {
		if err := client.CoreV1().Pods("ns").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitModel(t, store, "only c", func(s *discovery.Snapshot) bool {
		return len(s.Workloads) == 1 && s.WorkloadByUID("uid-ns-c") != nil
	})
	waitModel(t, store, "no problems", func(*discovery.Snapshot) bool { return len(src.Problems()) == 0 })
}

func TestSourceServiceLive(t *testing.T) {
	noLeaks(t)
	ctx := context.Background()
	client := fake.NewClientset(newNamespace("ns", nil), newPod("ns", "a", []string{"198.18.0.1"}))
	src, store := runSource(t, client, Config{})
	waitModel(t, store, "synced", func(s *discovery.Snapshot) bool { return true })

	svc := newService("ns", "s", []string{"198.19.0.10"}, svcPort{name: "http", port: 80, target: intstr.FromString("nope")})
	if _, err := client.CoreV1().Services("ns").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sl := newSlice("ns", "s-1", "s", nil, sliceEP{addr: "198.18.0.1", pod: "a"})
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := waitModel(t, store, "service with endpoint", func(s *discovery.Snapshot) bool {
		svc := s.ServiceByName("ns", "s")
		return svc != nil && len(svc.Endpoints) == 1
	})
	if p := s.ServiceByName("ns", "s").Port(80); p.TargetPort != 0 || p.TargetPortName != "nope" {
		t.Errorf("port %+v", p)
	}
	waitProblem(t, src, store, KindService, "s", `port 80: target port name "nope" is not resolved`)

	if err := client.CoreV1().Services("ns").Delete(ctx, "s", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, store, "service gone", func(s *discovery.Snapshot) bool { return s.ServiceByName("ns", "s") == nil })
}

// TestSourceSynced: Synced (and the store) stay unsynced while a list fails,
// and turn synced once it succeeds.
func TestSourceSynced(t *testing.T) {
	noLeaks(t)
	client := fake.NewClientset(newNamespace("ns", nil), newPod("ns", "a", []string{"198.18.0.1"}))
	var failing atomic.Bool
	failing.Store(true)
	lists := make(chan struct{}, 100)
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failing.Load() {
			select {
			case lists <- struct{}{}:
			default:
			}
			return true, nil, errors.New("injected list failure")
		}
		return false, nil, nil
	})
	src, store := runSource(t, client, Config{})
	if src.Synced() {
		t.Fatal("synced before anything was listed")
	}
	// Two failed lists: the reflector is retrying, nothing was published.
	for range 2 {
		select {
		case <-lists:
		case <-time.After(waitTimeout):
			t.Fatal("pods were never listed")
		}
	}
	if src.Synced() || store.Synced() {
		t.Fatal("synced while the pod list fails")
	}
	failing.Store(false)
	waitModel(t, store, "synced after recovery", func(s *discovery.Snapshot) bool { return len(s.Workloads) == 1 })
	waitSynced(t, src)
}

// TestSourceDebounce: a burst of changes within the debounce window becomes
// one snapshot.
func TestSourceDebounce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		client := fake.NewClientset(newNamespace("ns", nil))
		store := discovery.NewStore()
		src, err := New(Config{Client: client, Debounce: time.Second}, store)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx) }()
		synctest.Wait()
		if !src.Synced() {
			t.Fatal("not synced")
		}
		v0 := store.Load().Version
		for i := range 50 {
			if _, err := client.CoreV1().Pods("ns").Create(ctx, newPod("ns", fmt.Sprintf("p%d", i), []string{ipFor(i)}), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if v := store.Load().Version; v != v0 {
			t.Errorf("published before the debounce ended: version %d -> %d", v0, v)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		s := store.Load()
		if s.Version != v0+1 || len(s.Workloads) != 50 {
			t.Errorf("after the debounce: version %d (from %d), %d workloads; want one snapshot with 50", s.Version, v0, len(s.Workloads))
		}
		// A no-op update (labels unchanged, status churn we do not read)
		// publishes nothing.
		p, _ := client.CoreV1().Pods("ns").Get(ctx, "p0", metav1.GetOptions{})
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
		if _, err := client.CoreV1().Pods("ns").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if v := store.Load().Version; v != v0+1 {
			t.Errorf("an irrelevant change published version %d", v)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestSourceRunTwiceAndCancel(t *testing.T) {
	noLeaks(t)
	src, err := New(Config{Client: fake.NewClientset()}, discovery.NewStore())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := src.Run(ctx); err != nil {
		t.Errorf("Run with a done context: %v", err)
	}
	if err := src.Run(context.Background()); !errors.Is(err, ErrRunTwice) {
		t.Errorf("second Run: %v, want ErrRunTwice", err)
	}
}

func TestNewErrors(t *testing.T) {
	client := fake.NewClientset()
	tests := []struct {
		name  string
		cfg   Config
		store *discovery.Store
	}{
		{"no client", Config{}, discovery.NewStore()},
		{"no store", Config{Client: client}, nil},
		{"bad domain", Config{Client: client, ClusterDomain: "Not_A_Domain"}, discovery.NewStore()},
		{"bad label key", Config{Client: client, Options: discovery.EnrollmentOptions{NamespaceLabel: "bad key"}}, discovery.NewStore()},
		{"bad label value", Config{Client: client, Options: discovery.EnrollmentOptions{EnrollValue: "-x-"}}, discovery.NewStore()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg, tt.store); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

func TestRestConfig(t *testing.T) {
	if _, err := RestConfig(t.TempDir() + "/missing"); err == nil {
		t.Error("missing kubeconfig accepted")
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := RestConfig(""); err == nil {
		t.Error("in-cluster config outside a cluster accepted")
	}
}
