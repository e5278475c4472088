package service

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

func pod(name, ns, node, sa string, hostNet bool, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: sa, HostNetwork: hostNet},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// The informer hands the API server's pods to ca.PodAuthorizer as they are scheduled.
func TestPodInformer(t *testing.T) {
	waypointPod := pod("waypoint-0", "apps", "node3", "waypoint", false, corev1.PodRunning)
	waypointPod.UID = "uid-wp"
	waypointPod.Labels = map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint", "other": "dropped"}
	client := fake.NewClientset(
		pod("client", "default", "node1", "client", false, corev1.PodRunning),
		pod("echo", "default", "node2", "echo", false, corev1.PodRunning),
		pod("proxy", "kube-system", "node1", "proxy", true, corev1.PodRunning),
		pod("job", "batch", "node1", "job", false, corev1.PodSucceeded),
		pod("pending", "default", "", "pending", false, corev1.PodPending),
		waypointPod,
	)
	inf, err := newPodInformer(client)
	if err != nil {
		t.Fatal(err)
	}
	a := ca.PodAuthorizer{Pods: inf}
	if _, _, err := inf.Pod("apps", "waypoint-0"); !errors.Is(err, identity.ErrUnavailable) {
		t.Fatalf("pod before the informer synced: %v, want ErrUnavailable", err)
	}
	id := func(ns, sa string) spiffeid.ID {
		return spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
	}
	if err := a.Authorize(t.Context(), ca.Caller{Node: "node1"}, id("default", "client")); !errors.Is(err, identity.ErrUnavailable) {
		t.Fatalf("before the informer synced: %v, want ErrUnavailable", err)
	}
	go inf.Run(t.Context())
	for i := 0; !inf.informer.HasSynced(); i++ {
		if i == 500 {
			t.Fatal("pod informer did not sync")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pods, err := inf.PodsOnNode("node1")
	if err != nil || len(pods) != 3 {
		t.Fatalf("pods on node1: %+v, %v; want client, proxy and job", pods, err)
	}
	for _, tt := range []struct {
		node, ns, sa string
		allowed      bool
	}{
		{"node1", "default", "client", true},
		{"node1", "default", "echo", false},
		{"node2", "default", "echo", true},
		{"node1", "kube-system", "proxy", false},
		{"node1", "batch", "job", false},
		{"node3", "default", "client", false},
		{"", "default", "pending", false},
	} {
		err := a.Authorize(t.Context(), ca.Caller{Node: tt.node}, id(tt.ns, tt.sa))
		if tt.allowed != (err == nil) || (!tt.allowed && !errors.Is(err, identity.ErrNotAuthorized)) {
			t.Errorf("node %q for %s/%s: %v, want allowed %v", tt.node, tt.ns, tt.sa, err, tt.allowed)
		}
	}
	// Pods by name, with what a workload's authorization reads (UID, waypoint label).
	if p, ok, err := inf.Pod("apps", "waypoint-0"); err != nil || !ok || p.UID != "uid-wp" || p.Gateway != "waypoint" || p.ServiceAccount != "waypoint" {
		t.Errorf("pod apps/waypoint-0: %+v, %v, %v; want UID uid-wp, gateway waypoint, service account waypoint", p, ok, err)
	}
	if _, ok, err := inf.Pod("apps", "none"); ok || err != nil {
		t.Errorf("pod apps/none: found %v, %v", ok, err)
	}
	// A pod scheduled later is allowed once the watch sees it.
	if _, err := client.CoreV1().Pods("default").Create(t.Context(), pod("late", "default", "node3", "late", false, corev1.PodRunning), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; a.Authorize(t.Context(), ca.Caller{Node: "node3"}, id("default", "late")) != nil; i++ {
		if i == 500 {
			t.Fatal("a pod scheduled later is not authorized")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPublishRoot(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, []byte("PEM v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	log := slog.New(slog.DiscardHandler)
	data := func() string {
		t.Helper()
		cm, err := client.CoreV1().ConfigMaps("ambit").Get(t.Context(), "ambit-ca-root", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm.Data["root.pem"]
	}
	if err := publishRoot(t.Context(), client, "ambit/ambit-ca-root", root, log); err != nil {
		t.Fatal(err)
	}
	if got := data(); got != "PEM v1" {
		t.Fatalf("created root.pem %q", got)
	}
	if err := os.WriteFile(root, []byte("PEM v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := publishRoot(t.Context(), client, "ambit/ambit-ca-root", root, log); err != nil {
		t.Fatal(err)
	}
	if got := data(); got != "PEM v2" {
		t.Fatalf("updated root.pem %q", got)
	}
	for _, ref := range []string{"ambit-ca-root", "/x", "ambit/"} {
		if err := publishRoot(t.Context(), client, ref, root, log); err == nil {
			t.Errorf("-root-configmap %q accepted", ref)
		}
	}
	if err := publishRoot(t.Context(), client, "ambit/x", filepath.Join(dir, "none.pem"), log); err == nil {
		t.Error("missing root file accepted")
	}
}
