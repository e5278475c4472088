package kubetest_test

import (
	"context"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
)

func testPod(ns, name, node, sa string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "main", Image: "example.invalid/none"}},
		},
	}
}

// createRunningPod creates a pod and, standing in for the kubelet, sets its IP through the
// status subresource.
func createRunningPod(tb testing.TB, ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, ip string) *corev1.Pod {
	tb.Helper()
	p, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	if p, err = cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		tb.Fatalf("set status of pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return p
}

func podIPs(tb testing.TB, ctx context.Context, cs kubernetes.Interface, ns string) map[string]string {
	tb.Helper()
	l, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		tb.Fatalf("list pods in %s: %v", ns, err)
	}
	m := map[string]string{}
	for _, p := range l.Items {
		m[p.Name] = p.Status.PodIP
	}
	return m
}

func TestCluster(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := kubetest.StartForTest(t, ctx, kubetest.Options{})
	cs := c.Client()

	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	web := createRunningPod(t, ctx, cs, testPod("demo", "web", "node1", "web"), "198.18.1.10")
	want := map[string]string{"web": "198.18.1.10"}
	if got := podIPs(t, ctx, cs, "demo"); !maps.Equal(got, want) {
		t.Fatalf("pods before restart = %v, want %v", got, want)
	}

	t.Run("restart", func(t *testing.T) {
		if err := c.RestartAPIServer(ctx); err != nil {
			t.Fatalf("restart apiserver: %v", err)
		}
		if got := podIPs(t, ctx, cs, "demo"); !maps.Equal(got, want) {
			t.Fatalf("pods after restart = %v, want %v", got, want)
		}
	})

	t.Run("rbac", func(t *testing.T) {
		token, err := c.ServiceAccountToken(ctx, "demo", "nobody", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		nobody, err := kubernetes.NewForConfig(c.TokenConfig(token))
		if err != nil {
			t.Fatal(err)
		}
		// Forbidden (403), not Unauthorized (401): the token authenticates but grants nothing.
		_, err = nobody.CoreV1().Secrets("demo").List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("list secrets as demo/nobody: err = %v, want Forbidden", err)
		}
		ssr, err := nobody.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("self subject review: %v", err)
		}
		if got, want := ssr.Status.UserInfo.Username, "system:serviceaccount:demo:nobody"; got != want {
			t.Fatalf("token user = %q, want %q", got, want)
		}
	})

	t.Run("tokenreview", func(t *testing.T) {
		// node2 exists as a Node object, node1 does not (no kubelet registers it).
		node2, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node2"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create node: %v", err)
		}
		api := createRunningPod(t, ctx, cs, testPod("demo", "api", "node2", "api"), "198.18.2.10")
		for _, tc := range []struct {
			pod      *corev1.Pod
			sa       string
			nodeName string
			nodeUID  []string // nil: no node-uid extra
		}{
			{pod: web, sa: "web", nodeName: "node1"},
			{pod: api, sa: "api", nodeName: "node2", nodeUID: []string{string(node2.UID)}},
		} {
			t.Run(tc.pod.Name, func(t *testing.T) {
				token, err := c.ServiceAccountToken(ctx, "demo", tc.sa, tc.pod.Name, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("token review: %v", err)
				}
				if !tr.Status.Authenticated {
					t.Fatalf("token review: not authenticated: %s", tr.Status.Error)
				}
				u := tr.Status.User
				if want := "system:serviceaccount:demo:" + tc.sa; u.Username != want {
					t.Errorf("username = %q, want %q", u.Username, want)
				}
				extra := func(k string) []string { return []string(u.Extra["authentication.kubernetes.io/"+k]) }
				for k, want := range map[string][]string{
					"node-name": {tc.nodeName},
					"pod-name":  {tc.pod.Name},
					"pod-uid":   {string(tc.pod.UID)},
					"node-uid":  tc.nodeUID,
				} {
					if got := extra(k); !slices.Equal(got, want) {
						t.Errorf("extra %s = %q, want %q (all extras: %v)", k, got, want, u.Extra)
					}
				}
			})
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct{ ns, name, pod string }{
			{"", "x", ""},
			{"demo", "", ""},
			{"demo", "web", "other/web"},
			{"demo", "web", "missing"},
		} {
			if _, err := c.ServiceAccountToken(ctx, tc.ns, tc.name, tc.pod, 0); err == nil {
				t.Errorf("ServiceAccountToken(%q, %q, %q) succeeded, want an error", tc.ns, tc.name, tc.pod)
			}
		}
	})
}

// TestClusterInUnderlay runs the servers the way the e2e tests do: in the topology's underlay
// namespace, on an extra bridge address, reached from a node namespace.
func TestClusterInUnderlay(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	topo := netns.New(t, netns.Options{Nodes: 1, PodsPerNode: -1})
	apiAddr := netip.MustParseAddr("198.18.0.254")
	if out, err := topo.Underlay.Command(ctx, "ip", "addr", "add", apiAddr.String()+"/24", "dev", "br0").CombinedOutput(); err != nil {
		t.Fatalf("add %s to br0: %v: %s", apiAddr, err, out)
	}
	node := topo.Nodes[0]
	c := kubetest.StartForTest(t, ctx, kubetest.Options{
		BindAddress: apiAddr,
		Command:     topo.Underlay.Command,
		Dial:        node.DialContext,
	})
	if want := "https://198.18.0.254:6443"; c.URL != want {
		t.Errorf("URL = %q, want %q", c.URL, want)
	}
	if _, err := c.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}

	// A kubeconfig as a ztunnel in the node namespace would use it.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.WriteKubeconfig(kubeconfig, ""); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	cfg.Dial = node.DialContext
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "demo", metav1.GetOptions{}); err != nil {
		t.Fatalf("get namespace through the kubeconfig from %s: %v", node.Name, err)
	}

	// The apiserver is not reachable from this (private) namespace: the address lives in the
	// underlay only, so the node really is the path.
	cfg.Dial = nil
	cfg.Timeout = 2 * time.Second
	direct, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.CoreV1().Namespaces().Get(ctx, "demo", metav1.GetOptions{}); err == nil {
		t.Fatal("reached the apiserver without the node's dialer")
	}
}

// TestStartFailure: an apiserver that cannot start yields an error carrying its output, and
// leaves no etcd behind.
func TestStartFailure(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	c, err := kubetest.Start(ctx, kubetest.Options{Dir: dir, ExtraAPIServerArgs: []string{"--no-such-flag"}})
	if err == nil {
		c.Close()
		t.Fatal("Start with an unknown apiserver flag succeeded")
	}
	for _, want := range []string{"kube-apiserver exited", "no-such-flag"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	// A caller-provided Dir is kept (with the logs).
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver.log")); err != nil {
		t.Errorf("apiserver log in Dir: %v", err)
	}
}
