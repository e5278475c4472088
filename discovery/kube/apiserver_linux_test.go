package kube

import (
	"context"
	"os"
	"testing"

	"github.com/ambitmesh/ambit/discovery"
	kubetest "github.com/ambitmesh/ambit/tests/kube"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
)

// startCluster runs etcd + kube-apiserver on loopback in the test's private
// network namespace, closed at cleanup.
func startCluster(tb testing.TB) *kubetest.Cluster {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root (private network namespace)")
	}
	if binariesErr != nil {
		tb.Fatalf("kube test binaries: %v", binariesErr)
	}
	return kubetest.StartForTest(tb, context.Background(), kubetest.Options{})
}

// readerClient returns a client for a service account that may only
// get/list/watch what the source reads: the RBAC the chart grants.
func readerClient(tb testing.TB, c *kubetest.Cluster) kubernetes.Interface {
	tb.Helper()
	cs, err := kubernetes.NewForConfig(readerConfig(tb, c))
	if err != nil {
		tb.Fatal(err)
	}
	return cs
}

// readerConfig is readerClient's configuration, for the metadata client.
func readerConfig(tb testing.TB, c *kubetest.Cluster) *rest.Config {
	tb.Helper()
	ctx := context.Background()
	admin := c.Client()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "ambit-discovery-test"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "services", "nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	token, err := c.ServiceAccountToken(ctx, "ambit-system", "ztunnel", "", 0)
	if err != nil {
		tb.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ambit-discovery-test"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "ambit-system", Name: "ztunnel"}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	return c.TokenConfig(token)
}

// metadataClient is a metadata client (for the Nodes) with cfg's credentials.
func metadataClient(tb testing.TB, cfg *rest.Config) metadata.Interface {
	tb.Helper()
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return mc
}

// createRunningPod creates a pod and, standing in for the kubelet, sets its
// IP through the status subresource.
func createRunningPod(tb testing.TB, cs kubernetes.Interface, ns, name, ip string, labels map[string]string) *corev1.Pod {
	tb.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   "node-1",
			Containers: []corev1.Container{{Name: "main", Image: "example.invalid/none", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}}}},
		},
	}
	p, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	if p, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		tb.Fatalf("set status of pod %s/%s: %v", ns, name, err)
	}
	return p
}

func labelNamespace(tb testing.TB, cs kubernetes.Interface, name string, labels map[string]string) {
	tb.Helper()
	ctx := context.Background()
	ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	ns.Labels = labels
	if _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		tb.Fatal(err)
	}
}

// TestAPIServer drives the source against a real kube-apiserver: the model
// from pods, a service and its EndpointSlice (as the controller-manager,
// absent here, would write it), live enrollment, and an API server restart.
func TestAPIServer(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	admin := c.Client()
	opts := discovery.EnrollmentOptions{}.WithDefaults()

	const ns = "shop"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, newNamespace(ns, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a := createRunningPod(t, admin, ns, "a", "198.18.0.1", map[string]string{"app": "web"})
	b := createRunningPod(t, admin, ns, "b", "198.18.0.2", map[string]string{"app": "web"})
	svc := newService(ns, "web", nil, svcPort{name: "http", port: 80, target: intstr.FromString("web")})
	svc, err := admin.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl := newSlice(ns, "web-1", "web", []slicePort{{"http", 8080}}, sliceEP{addr: "198.18.0.1", pod: "a"}, sliceEP{addr: "198.18.0.2", pod: "b"})
	sl.Endpoints[0].TargetRef.UID, sl.Endpoints[1].TargetRef.UID = a.UID, b.UID
	if _, err := admin.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// No Node objects here (no kubelet): the pods' node-1 is declared without locality.
	rc := readerConfig(t, c)
	reader, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	src, store := runSource(t, reader, Config{Metadata: metadataClient(t, rc)})
	s := waitModel(t, store, "pods and service", func(s *discovery.Snapshot) bool {
		svc := s.ServiceByName(ns, "web")
		return s.WorkloadByUID(string(a.UID)) != nil && s.WorkloadByUID(string(b.UID)) != nil && svc != nil && len(svc.Endpoints) == 2
	})
	waitSynced(t, src)
	vip := addrs(svc.Spec.ClusterIP)[0]
	got, port := s.ServiceByVIP(vip, 80)
	if got == nil || port == nil || port.TargetPort != 8080 || got.Hostname != "web.shop.svc.cluster.local" {
		t.Fatalf("service by VIP %s: %+v port %+v", vip, got, port)
	}
	for _, ep := range got.Endpoints {
		if ep.WorkloadUID == "" {
			t.Errorf("endpoint %s has no workload", ep.Addr)
		}
	}
	if w := s.WorkloadByIP(addrs("198.18.0.1")[0]); w.Enrolled || w.ServiceAccount != "default" || w.Node != "node-1" {
		t.Errorf("workload a %+v", w)
	}

	// Enrollment follows the namespace label, live.
	labelNamespace(t, admin, ns, map[string]string{opts.NamespaceLabel: opts.EnrollValue})
	waitModel(t, store, "enrolled", func(s *discovery.Snapshot) bool {
		x, _ := enrolled(s, string(a.UID))
		y, _ := enrolled(s, string(b.UID))
		return x && y
	})

	// While the API server is down the model stays; changes made after the
	// restart arrive through the resumed watches.
	if err := c.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if s := store.Load(); !src.Synced() || s.WorkloadByUID(string(a.UID)) == nil {
		t.Fatal("model lost while the API server is down")
	}
	if err := c.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if s := store.Load(); s.WorkloadByUID(string(a.UID)) == nil || !s.WorkloadByUID(string(a.UID)).Enrolled {
		t.Fatal("model lost across the restart")
	}
	cpod := createRunningPod(t, admin, ns, "c", "198.18.0.3", map[string]string{opts.PodLabel: opts.OptOutValue})
	if err := admin.CoreV1().Pods(ns).Delete(ctx, "b", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	labelNamespace(t, admin, ns, map[string]string{opts.NamespaceLabel: opts.EnrollValue, "team": "x"})
	waitModel(t, store, "changes after the restart", func(s *discovery.Snapshot) bool {
		x, _ := enrolled(s, string(a.UID))
		y, ok := enrolled(s, string(cpod.UID))
		nsx := s.Namespace(ns)
		return x && ok && !y && s.WorkloadByUID(string(b.UID)) == nil && nsx != nil && nsx.Labels["team"] == "x"
	})
	if probs := src.Problems(); len(probs) != 0 {
		t.Errorf("problems: %+v", probs)
	}
}

// TestAPIServerProblems: bad objects accepted by the API server (a pod with
// no IP, an unresolvable named port, an IP reused by a newer pod) show as
// Problems while the rest of the model is built.
func TestAPIServerProblems(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	admin := c.Client()
	const ns = "edge"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, newNamespace(ns, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	old := createRunningPod(t, admin, ns, "old", "198.18.1.1", nil)
	pending := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pending"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "example.invalid/none"}}},
	}
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, pending, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	src, store := runSource(t, admin, Config{})
	waitModel(t, store, "old", func(s *discovery.Snapshot) bool { return s.WorkloadByUID(string(old.UID)) != nil })
	waitProblem(t, src, store, KindPod, "pending", ReasonNoPodIP)

	// Creation timestamps have second resolution: make sure "new" is newer.
	for {
		newer := createRunningPod(t, admin, ns, "new", "198.18.1.1", nil)
		if newer.CreationTimestamp.After(old.CreationTimestamp.Time) {
			s := waitModel(t, store, "new owns the IP", func(s *discovery.Snapshot) bool {
				w := s.WorkloadByIP(addrs("198.18.1.1")[0])
				return w != nil && w.UID == string(newer.UID)
			})
			if s.WorkloadByUID(string(old.UID)) != nil {
				t.Error("old pod still in the model")
			}
			break
		}
		if err := admin.CoreV1().Pods(ns).Delete(ctx, "new", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		waitModel(t, store, "new gone", func(s *discovery.Snapshot) bool { return s.WorkloadByUID(string(newer.UID)) == nil })
	}
	waitProblem(t, src, store, KindPod, "old", reasonLeftOut)
}

// TestAPIServerLocality: Nodes' topology labels become their pods' localities, and a
// relabelled node moves them, live; Services' trafficDistribution is read, a value
// Ambit does not use is a Problem.
func TestAPIServerLocality(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	admin := c.Client()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{
		LabelRegion: "us-east", LabelZone: "us-east-1a", "kubernetes.io/hostname": "node-1",
	}}}
	if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const ns = "shop"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, newNamespace(ns, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a := createRunningPod(t, admin, ns, "a", "198.18.0.1", map[string]string{"app": "web"})
	for name, td := range map[string]string{"web": corev1.ServiceTrafficDistributionPreferClose, "same-node": corev1.ServiceTrafficDistributionPreferSameNode} {
		svc := newService(ns, name, nil, svcPort{name: "http", port: 80, target: intstr.FromInt32(8080)})
		svc.Spec.TrafficDistribution = &td
		if _, err := admin.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	rc := readerConfig(t, c)
	reader, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	src, store := runSource(t, reader, Config{Metadata: metadataClient(t, rc)})
	locality := func(s *discovery.Snapshot) string {
		if w := s.WorkloadByUID(string(a.UID)); w != nil {
			return w.Locality.String()
		}
		return "(no workload)"
	}
	s := waitModel(t, store, "a in us-east-1a", func(s *discovery.Snapshot) bool { return locality(s) == "us-east/us-east-1a" })
	if svc := s.ServiceByName(ns, "web"); svc == nil || svc.TrafficDistribution != discovery.TrafficDistributionPreferClose {
		t.Errorf("service web: %+v, want trafficDistribution PreferClose", svc)
	}
	if svc := s.ServiceByName(ns, "same-node"); svc == nil || svc.TrafficDistribution != "" {
		t.Errorf("service same-node: %+v, want no trafficDistribution", svc)
	}
	waitProblem(t, src, store, KindService, "same-node", `spec.trafficDistribution: "PreferSameNode" is not supported`)

	// A status update (what kubelets do all the time) changes nothing; a relabel moves
	// the pod.
	cur, err := admin.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	if cur, err = admin.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cur.Labels[LabelZone] = "us-east-1b"
	cur.Labels[LabelSubzone] = "rack-7"
	if _, err := admin.CoreV1().Nodes().Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s = waitModel(t, store, "a moved to us-east-1b", func(s *discovery.Snapshot) bool { return locality(s) == "us-east/us-east-1b/rack-7" })
	if n := s.Node("node-1"); n == nil || n.Locality != (discovery.Locality{Region: "us-east", Zone: "us-east-1b", Subzone: "rack-7"}) {
		t.Errorf("node-1 in the model: %+v", n)
	}
}
