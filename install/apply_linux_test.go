package install

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
)

// fieldManager owns what the test applies, as helm would with its own manager.
const fieldManager = "ambit-install-test"

// TestApplyToRealAPIServer applies every rendered object to a real kube-apiserver with
// server-side apply and strict field validation (so a field the server's schema does not
// know fails), then checks with the service accounts' own tokens that RBAC grants ztunnel
// and the CA what they need and nothing more.
func TestApplyToRealAPIServer(t *testing.T) {
	netns.RequireRoot(t)
	b := requireBinaries(t)
	ctx := t.Context()
	c := kubetest.StartForTest(t, ctx, kubetest.Options{Binaries: b})
	dyn, err := dynamic.NewForConfig(c.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	// Run in sequence: every step owns the same cluster-scoped objects, whose bindings name
	// the last release namespace applied. helm install goes first: helm refuses to adopt
	// objects another field manager created.
	t.Run("helm install and uninstall", func(t *testing.T) { helmInstall(ctx, t, c) })
	for _, tc := range []struct {
		name  string
		ns    string
		extra []string
	}{
		{"defaults", "ambit-system", nil},
		{"every option", "mesh-system", []string{"--set", "ca.persistence.enabled=true,ztunnel.cgroup.mount=true,ztunnel.bpf.mountFS=true,ztunnel.priorityClassName=system-cluster-critical,image.pullSecrets={regcred}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustRender(t, tc.ns, tc.extra...)
			_, err := c.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tc.ns}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create release namespace %s: %v", tc.ns, err)
			}
			applyAll(ctx, t, dyn, mapper, m, false)
			// Applying again (helm upgrade with the same values) must change nothing.
			applyAll(ctx, t, dyn, mapper, m, true)
			checkPodSecurity(ctx, t, c, m, tc.ns)
			checkZtunnelAccess(ctx, t, c, tc.ns)
			checkCAAccess(ctx, t, c, tc.ns)
			checkControllerAccess(ctx, t, c, tc.ns)
		})
	}
}

// helmInstall installs the chart with helm itself, as a user would, checks the install
// notes and the objects, and uninstalls it again.
func helmInstall(ctx context.Context, t *testing.T, c *kubetest.Cluster) {
	const ns = "helm-system"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.WriteKubeconfig(kubeconfig, ""); err != nil {
		t.Fatal(err)
	}
	kc := "--kubeconfig=" + kubeconfig
	out, stderr, err := helmCmd(t, "install", "ambit", chartDir, kc, "--namespace", ns, "--create-namespace",
		"--set", "ca.persistence.enabled=true,enrollment.namespaceLabel.key=mesh.example/on,enrollment.namespaceLabel.value=yes")
	if err != nil {
		t.Fatalf("helm install: %v\n%s%s", err, out, stderr)
	}
	_, notes, _ := strings.Cut(string(out), "NOTES:")
	if want := "kubectl label namespace <namespace> mesh.example/on=yes"; !strings.Contains(notes, want) {
		t.Errorf("install notes do not say %q:\n%s", want, out)
	}
	admin := c.Client()
	if _, err := admin.AppsV1().DaemonSets(ns).Get(ctx, "ambit-ztunnel", metav1.GetOptions{}); err != nil {
		t.Errorf("after helm install: %v", err)
	}
	if _, err := admin.RbacV1().ClusterRoles().Get(ctx, "ambit-ztunnel", metav1.GetOptions{}); err != nil {
		t.Errorf("after helm install: %v", err)
	}

	out, stderr, err = helmCmd(t, "uninstall", "ambit", kc, "--namespace", ns, "--wait=false")
	if err != nil {
		t.Fatalf("helm uninstall: %v\n%s%s", err, out, stderr)
	}
	if _, err := admin.AppsV1().DaemonSets(ns).Get(ctx, "ambit-ztunnel", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DaemonSet after helm uninstall: err %v, want NotFound", err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Get(ctx, "ambit-ztunnel", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ClusterRoleBinding after helm uninstall: err %v, want NotFound", err)
	}
	// The CA's state outlives an uninstall: deleting it would invalidate every certificate.
	if _, err := admin.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "ambit-ca", metav1.GetOptions{}); err != nil {
		t.Errorf("CA PersistentVolumeClaim after helm uninstall: %v, want kept", err)
	}
}

// applyAll server-side applies every object of m, then reads each back. With unchanged,
// each apply must leave the object's resourceVersion as it was.
func applyAll(ctx context.Context, t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, m manifest, unchanged bool) {
	t.Helper()
	force := true
	for _, d := range m.docs {
		gvk := d.u.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Errorf("%s: the server does not serve %s: %v", d.title, gvk, err)
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if d.u.GetNamespace() == "" {
				t.Errorf("%s: namespaced kind rendered without a namespace", d.title)
				continue
			}
			ri = dyn.Resource(mapping.Resource).Namespace(d.u.GetNamespace())
		} else if d.u.GetNamespace() != "" {
			t.Errorf("%s: cluster-scoped kind rendered with a namespace", d.title)
		}
		var before string // the object before a re-apply, by comparable
		if unchanged {
			cur, err := ri.Get(ctx, d.u.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Errorf("%s: get before re-apply: %v", d.title, err)
				continue
			}
			before = comparable(cur)
		}
		applied, err := ri.Patch(ctx, d.u.GetName(), types.ApplyPatchType, d.json, metav1.PatchOptions{
			FieldManager:    fieldManager,
			Force:           &force,
			FieldValidation: metav1.FieldValidationStrict,
		})
		if err != nil {
			t.Errorf("%s: server-side apply refused: %v", d.title, err)
			continue
		}
		got, err := ri.Get(ctx, d.u.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Errorf("%s: applied but not found: %v", d.title, err)
			continue
		}
		if got.GetUID() != applied.GetUID() || got.GetUID() == "" {
			t.Errorf("%s: uid %q after apply, %q on read", d.title, applied.GetUID(), got.GetUID())
		}
		// Compared by content: the server may rewrite an unchanged object (it does for
		// PersistentVolumeClaims), which only bumps resourceVersion.
		if after := comparable(got); unchanged && after != before {
			t.Errorf("%s: re-applying the same object changed it:\nbefore %s\nafter  %s", d.title, before, after)
		}
		for k, v := range d.u.GetLabels() {
			if got.GetLabels()[k] != v {
				t.Errorf("%s: label %s=%q stored as %q", d.title, k, v, got.GetLabels()[k])
			}
		}
	}
}

// checkPodSecurity creates (dry run) pods from the rendered pod templates in namespaces
// enforcing each Pod Security level: the CA passes "restricted", ztunnel needs
// "privileged" (as the chart's README says). Dry runs go through admission, so the
// server's own PodSecurity plugin decides, and no pod is left behind.
func checkPodSecurity(ctx context.Context, t *testing.T, c *kubetest.Cluster, m manifest, ns string) {
	t.Helper()
	admin := c.Client()
	ztunnel := find[*appsv1.DaemonSet](t, m, ns, "ambit-ztunnel").Spec.Template
	ca := find[*appsv1.Deployment](t, m, ns, "ambit-ca").Spec.Template
	ctrl := find[*appsv1.Deployment](t, m, ns, "ambit-controller").Spec.Template
	for _, tc := range []struct {
		level   string
		pod     corev1.PodTemplateSpec
		name    string
		allowed bool
	}{
		{"restricted", ca, "ambit-ca", true},
		{"restricted", ctrl, "ambit-controller", true},
		{"baseline", ztunnel, "ambit-ztunnel", false},
		{"privileged", ztunnel, "ambit-ztunnel", true},
	} {
		psaNS := "psa-" + tc.level
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: psaNS, Labels: map[string]string{"pod-security.kubernetes.io/enforce": tc.level},
		}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create namespace %s: %v", psaNS, err)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: tc.name, Namespace: psaNS, Labels: tc.pod.Labels}, Spec: tc.pod.Spec}
		_, err = admin.CoreV1().Pods(psaNS).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case tc.allowed && err != nil:
			t.Errorf("%s pod in a namespace enforcing %q: %v", tc.name, tc.level, err)
		case !tc.allowed && !apierrors.IsForbidden(err):
			t.Errorf("%s pod in a namespace enforcing %q: err %v, want Forbidden by PodSecurity", tc.name, tc.level, err)
		}
	}
}

// comparable is the object as JSON without what changes on every write.
func comparable(u *unstructured.Unstructured) string {
	u = u.DeepCopy()
	u.SetResourceVersion("")
	u.SetManagedFields(nil)
	b, err := u.MarshalJSON()
	if err != nil {
		return "unmarshalable: " + err.Error()
	}
	return string(b)
}

// access is one authorization question and its expected answer.
type access struct {
	group, resource, sub, verb, ns, name string
	allowed                              bool
}

// checkAccess asks the server, as the client's own user, with SelfSubjectAccessReview.
func checkAccess(ctx context.Context, t *testing.T, who string, cs kubernetes.Interface, want []access) {
	t.Helper()
	for _, a := range want {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group: a.group, Resource: a.resource, Subresource: a.sub, Verb: a.verb, Namespace: a.ns, Name: a.name,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Errorf("%s: SelfSubjectAccessReview %+v: %v", who, a, err)
			continue
		}
		if r.Status.Allowed != a.allowed {
			t.Errorf("%s: %s %s/%s/%s (namespace %q, name %q) allowed=%v, want %v (%s)", who, a.verb, a.group, a.resource, a.sub, a.ns, a.name, r.Status.Allowed, a.allowed, r.Status.Reason)
		}
	}
}

func tokenClient(ctx context.Context, t *testing.T, c *kubetest.Cluster, ns, sa string) kubernetes.Interface {
	t.Helper()
	tok, err := c.ServiceAccountToken(ctx, ns, sa, "", time.Hour)
	if err != nil {
		t.Fatalf("token for %s/%s: %v", ns, sa, err)
	}
	cs, err := kubernetes.NewForConfig(c.TokenConfig(tok))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// wantForbidden fails t unless err is the server's 403.
func wantForbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: err %v, want Forbidden", what, err)
	}
}

func checkZtunnelAccess(ctx context.Context, t *testing.T, c *kubetest.Cluster, ns string) {
	t.Helper()
	zt := tokenClient(ctx, t, c, ns, "ambit-ztunnel")

	// What the informers do: list and watch cluster-wide.
	lists := []struct {
		what string
		list func() error
	}{
		{"namespaces", func() error { _, err := zt.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); return err }},
		{"pods", func() error { _, err := zt.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err }},
		{"services", func() error { _, err := zt.CoreV1().Services("").List(ctx, metav1.ListOptions{}); return err }},
		{"nodes", func() error { _, err := zt.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); return err }},
		{"endpointslices", func() error {
			_, err := zt.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
			return err
		}},
	}
	for _, l := range lists {
		if err := l.list(); err != nil {
			t.Errorf("ztunnel: list %s: %v", l.what, err)
		}
	}
	w, err := zt.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("ztunnel: watch pods: %v", err)
	} else {
		w.Stop()
	}

	// No Secrets, anywhere, and nothing written.
	_, err = zt.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	wantForbidden(t, "ztunnel: list secrets in all namespaces", err)
	_, err = zt.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	wantForbidden(t, "ztunnel: list secrets in "+ns, err)
	_, err = zt.CoreV1().Secrets(ns).Get(ctx, "any", metav1.GetOptions{})
	wantForbidden(t, "ztunnel: get a secret", err)
	_, err = zt.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-write"}}, metav1.CreateOptions{})
	wantForbidden(t, "ztunnel: create a configmap", err)
	err = zt.CoreV1().Namespaces().Delete(ctx, "default", metav1.DeleteOptions{})
	wantForbidden(t, "ztunnel: delete a namespace", err)

	var want []access
	for _, r := range []struct{ group, resource string }{{"", "namespaces"}, {"", "pods"}, {"", "services"}, {"", "nodes"}, {"discovery.k8s.io", "endpointslices"}} {
		for _, verb := range []string{"get", "list", "watch"} {
			want = append(want, access{group: r.group, resource: r.resource, verb: verb, allowed: true})
		}
		for _, verb := range []string{"create", "update", "patch", "delete", "deletecollection"} {
			want = append(want, access{group: r.group, resource: r.resource, verb: verb, ns: "default", allowed: false})
		}
	}
	for _, verb := range []string{"get", "list", "watch"} {
		want = append(want,
			access{resource: "secrets", verb: verb, allowed: false},
			access{resource: "secrets", verb: verb, ns: ns, allowed: false},
			access{resource: "configmaps", verb: verb, ns: ns, allowed: false},
			// DestinationRules are the waypoints' business.
			access{group: "networking.istio.io", resource: "destinationrules", verb: verb, allowed: false},
		)
	}
	want = append(want,
		access{group: "authentication.k8s.io", resource: "tokenreviews", verb: "create", allowed: false},
		access{resource: "serviceaccounts", verb: "impersonate", allowed: false},
		access{resource: "serviceaccounts", sub: "token", verb: "create", ns: ns, name: "ambit-ca", allowed: false},
	)
	checkAccess(ctx, t, "ztunnel", zt, want)
}

// checkCAAccess: the CA can review ztunnel's audience-bound token (and learn its pod's
// node from it), read pods and namespaces, and publish only its root ConfigMap.
func checkCAAccess(ctx context.Context, t *testing.T, c *kubetest.Cluster, ns string) {
	t.Helper()
	ca := tokenClient(ctx, t, c, ns, "ambit-ca")
	admin := c.Client()

	// A ztunnel pod on node-a, and the token the kubelet would project into it: audience
	// ambit-ca, bound to the pod.
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ambit-ztunnel-test", Namespace: ns},
		Spec: corev1.PodSpec{
			ServiceAccountName: "ambit-ztunnel",
			NodeName:           "node-a",
			Containers:         []corev1.Container{{Name: "ztunnel", Image: "ztunnel"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create a ztunnel pod: %v", err)
	}
	exp := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "ambit-ztunnel", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{caAudience},
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for ambit-ztunnel with audience %s: %v", caAudience, err)
	}
	review := func(token string) authenticationv1.TokenReviewStatus {
		t.Helper()
		r, err := ca.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{
			Token: token, Audiences: []string{caAudience},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("ca: create TokenReview: %v", err)
		}
		return r.Status
	}
	st := review(tr.Status.Token)
	if !st.Authenticated || st.User.Username != "system:serviceaccount:"+ns+":ambit-ztunnel" || !slices.Contains(st.Audiences, caAudience) {
		t.Errorf("ca: review of ztunnel's token: %+v, want authenticated as ambit-ztunnel for %s", st, caAudience)
	}
	if node := st.User.Extra["authentication.kubernetes.io/node-name"]; !slices.Equal(node, authenticationv1.ExtraValue{"node-a"}) {
		t.Errorf("ca: review names node %v, want node-a (extra %v)", node, st.User.Extra)
	}
	// A token for the API server's audience is no credential for the CA.
	apiTok, err := c.ServiceAccountToken(ctx, ns, "ambit-ztunnel", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if st := review(apiTok); st.Authenticated {
		t.Errorf("ca: a token without audience %s was accepted: %+v", caAudience, st.User)
	}

	// Publishing the root.
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: caRootCM, Namespace: ns}, Data: map[string]string{"root.pem": "first"}}
	if _, err := ca.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Errorf("ca: create %s: %v", caRootCM, err)
	}
	cur, err := ca.CoreV1().ConfigMaps(ns).Get(ctx, caRootCM, metav1.GetOptions{})
	if err != nil {
		t.Errorf("ca: get %s: %v", caRootCM, err)
	} else {
		cur.Data["root.pem"] = "second"
		if _, err := ca.CoreV1().ConfigMaps(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Errorf("ca: update %s: %v", caRootCM, err)
		}
	}
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "someone-else"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = ca.CoreV1().ConfigMaps(ns).Get(ctx, "someone-else", metav1.GetOptions{})
	wantForbidden(t, "ca: get another configmap", err)
	_, err = ca.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: caRootCM}}, metav1.CreateOptions{})
	wantForbidden(t, "ca: create a configmap in another namespace", err)
	_, err = ca.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	wantForbidden(t, "ca: list secrets", err)
	if _, err := ca.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("ca: list pods: %v", err)
	}

	checkAccess(ctx, t, "ca", ca, []access{
		{group: "authentication.k8s.io", resource: "tokenreviews", verb: "create", allowed: true},
		{resource: "pods", verb: "watch", allowed: true},
		{resource: "namespaces", verb: "list", allowed: true},
		{resource: "pods", verb: "create", ns: ns, allowed: false},
		{resource: "configmaps", verb: "update", ns: ns, name: caRootCM, allowed: true},
		{resource: "configmaps", verb: "update", ns: ns, name: "someone-else", allowed: false},
		{resource: "configmaps", verb: "delete", ns: ns, name: caRootCM, allowed: false},
		{resource: "configmaps", verb: "list", ns: ns, allowed: false},
		{resource: "secrets", verb: "get", ns: ns, allowed: false},
		{resource: "secrets", verb: "list", allowed: false},
		{resource: "serviceaccounts", verb: "create", ns: ns, name: "", allowed: false},
		{resource: "serviceaccounts", sub: "token", verb: "create", ns: ns, name: "ambit-ztunnel", allowed: false},
	})
}
