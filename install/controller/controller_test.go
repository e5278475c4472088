package controller

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	fakediscovery "k8s.io/client-go/discovery/fake"
	kfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambitmesh/ambit/discovery"
)

const (
	testNS   = "apps"
	rootNS   = "ambit-system"
	rootName = "ambit-ca-root"
)

var testConfig = Config{
	Image: "ghcr.io/ambitmesh/waypoint:test", CAAddr: "ambit-ca.ambit-system.svc:15012",
	CARootConfigMap: rootNS + "/" + rootName, Args: []string{"-log-level=debug"},
}

type fixture struct {
	c    *Controller
	kube *kfake.Clientset
	gw   *gwfake.Clientset
	ctx  context.Context
}

// newFixture starts a controller's caches on fake clientsets holding objs; the test
// drives the reconciles itself (round), so that what they write is deterministic.
func newFixture(t *testing.T, kubeObjs []runtime.Object, gwObjs []runtime.Object) *fixture {
	t.Helper()
	kube := kfake.NewClientset(kubeObjs...)
	// Created through the typed client: the fake's tracker files objects passed to
	// NewClientset under the first version the scheme knows the type by (v1beta1 for
	// types v1 shares with it), where the v1 client does not find them.
	gw := gwfake.NewSimpleClientset() //nolint:staticcheck // NewClientset needs an OpenAPI model the fake lacks
	for _, o := range gwObjs {
		var err error
		switch o := o.(type) {
		case *gatewayv1.Gateway:
			_, err = gw.GatewayV1().Gateways(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		case *gatewayv1.GatewayClass:
			_, err = gw.GatewayV1().GatewayClasses().Create(context.Background(), o, metav1.CreateOptions{})
		case *gatewayv1.HTTPRoute:
			_, err = gw.GatewayV1().HTTPRoutes(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		case *gatewayv1.GRPCRoute:
			_, err = gw.GatewayV1().GRPCRoutes(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		default:
			t.Fatalf("fixture: %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	gw.ClearActions()
	kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{
		GroupVersion: gatewayv1.GroupVersion.String(),
		APIResources: []metav1.APIResource{{Name: "gateways"}, {Name: "gatewayclasses"}, {Name: "httproutes"}, {Name: "grpcroutes"}, {Name: "referencegrants"}},
	}}
	c, err := New(testConfig, Deps{Kube: kube, Gateway: gw})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		c.queue.ShutDown()
		for _, f := range c.factories {
			f.Shutdown()
		}
	})
	grpc, err := c.awaitCRDs(ctx)
	if err != nil || !grpc {
		t.Fatalf("awaitCRDs: %v %v", grpc, err)
	}
	if err := c.start(ctx, grpc); err != nil {
		t.Fatal(err)
	}
	return &fixture{c: c, kube: kube, gw: gw, ctx: ctx}
}

// round reconciles every key once, after the caches have caught up with the
// fakes' objects.
func (f *fixture) round(t *testing.T) {
	t.Helper()
	f.settle(t)
	for _, k := range []string{keyClass, keyGC} {
		if err := f.c.reconcile(f.ctx, k); err != nil {
			t.Fatalf("reconcile %s: %v", k, err)
		}
	}
	f.settle(t)
	gws, _ := f.gw.GatewayV1().Gateways("").List(f.ctx, metav1.ListOptions{})
	for _, g := range gws.Items {
		if err := f.c.reconcile(f.ctx, gwPrefix+g.Namespace+"/"+g.Name); err != nil {
			t.Fatalf("reconcile %s/%s: %v", g.Namespace, g.Name, err)
		}
	}
	f.settle(t)
	if err := f.c.reconcile(f.ctx, keyRoutes); err != nil {
		t.Fatalf("reconcile routes: %v", err)
	}
	f.settle(t)
}

// settle waits until every cache holds the fakes' current objects.
func (f *fixture) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if f.synced() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("caches did not catch up with the fake API")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) synced() bool {
	ctx := f.ctx
	gws, _ := f.gw.GatewayV1().Gateways("").List(ctx, metav1.ListOptions{})
	for _, g := range gws.Items {
		if c, err := f.c.gateways.Gateways(g.Namespace).Get(g.Name); err != nil || !same(c, &g) {
			return false
		}
	}
	if n, _ := f.c.gateways.List(everything()); len(n) != len(gws.Items) {
		return false
	}
	hrs, _ := f.gw.GatewayV1().HTTPRoutes("").List(ctx, metav1.ListOptions{})
	for _, r := range hrs.Items {
		if c, err := f.c.httpRts.HTTPRoutes(r.Namespace).Get(r.Name); err != nil || !same(c, &r) {
			return false
		}
	}
	gcs, _ := f.gw.GatewayV1().GatewayClasses().List(ctx, metav1.ListOptions{})
	for _, g := range gcs.Items {
		if c, err := f.c.classes.Get(g.Name); err != nil || !same(c, &g) {
			return false
		}
	}
	svcs, _ := f.kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	for _, s := range svcs.Items {
		if c, err := f.c.services.Services(s.Namespace).Get(s.Name); err != nil || !same(c, &s) {
			return false
		}
	}
	deps, _ := f.kube.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	for _, d := range deps.Items {
		if c, err := f.c.deploys.Deployments(d.Namespace).Get(d.Name); err != nil || !same(c, &d) {
			return false
		}
	}
	crbs, _ := f.kube.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if n, _ := f.c.bindings.List(everything()); len(n) != len(crbs.Items) {
		return false
	}
	cms, _ := f.kube.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	for _, cm := range cms.Items {
		l := f.c.cms
		if cm.Namespace == rootNS && cm.Name == rootName {
			l = f.c.roots
		} else if cm.Labels[LabelManagedBy] != ManagedBy {
			continue
		}
		if c, err := l.ConfigMaps(cm.Namespace).Get(cm.Name); err != nil || !same(c, &cm) {
			return false
		}
	}
	sas, _ := f.kube.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{})
	for _, sa := range sas.Items {
		if sa.Labels[LabelManagedBy] != ManagedBy {
			continue
		}
		if c, err := f.c.accounts.ServiceAccounts(sa.Namespace).Get(sa.Name); err != nil || !same(c, &sa) {
			return false
		}
	}
	return true
}

// same compares a cached object with the API's: the fakes do not always set
// resourceVersions.
func same[T any](cached, api *T) bool { return equality.Semantic.DeepEqual(cached, api) }

// writes counts the create, update, patch and delete calls made so far.
func writes(actions ...[]k8stesting.Action) []string {
	var out []string
	for _, as := range actions {
		for _, a := range as {
			switch a.GetVerb() {
			case "create", "update", "patch", "delete":
				out = append(out, a.GetVerb()+" "+a.GetResource().Resource+"/"+a.GetSubresource())
			}
		}
	}
	return out
}

func waypointGateway(name string, mutate ...func(*gatewayv1.Gateway)) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: types.UID("uid-" + name), Generation: 1},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: discovery.DefaultWaypointClass,
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	for _, m := range mutate {
		m(gw)
	}
	return gw
}

func rootConfigMap() *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: rootName, Namespace: rootNS}, Data: map[string]string{RootKey: "ROOT PEM"}}
}

func (f *fixture) gateway(t *testing.T, name string) *gatewayv1.Gateway {
	t.Helper()
	gw, err := f.gw.GatewayV1().Gateways(testNS).Get(f.ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return gw
}

func condition(t *testing.T, conds []metav1.Condition, typ string) metav1.Condition {
	t.Helper()
	c := apimeta.FindStatusCondition(conds, typ)
	if c == nil {
		t.Fatalf("no %s condition in %+v", typ, conds)
	}
	return *c
}

func wantCondition(t *testing.T, who string, conds []metav1.Condition, typ string, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	c := condition(t, conds, typ)
	if c.Status != status || c.Reason != reason {
		t.Errorf("%s: %s=%s (%s: %s), want %s (%s)", who, typ, c.Status, c.Reason, c.Message, status, reason)
	}
	if c.LastTransitionTime.IsZero() {
		t.Errorf("%s: %s has no lastTransitionTime", who, typ)
	}
	return c
}

// A waypoint Gateway gets its account, root copy, Deployment, Service and binding, all
// owned by it; Programmed follows the Deployment's ready pods; a steady state writes
// nothing; deleting the Gateway deletes the binding.
func TestWaypointLifecycle(t *testing.T) {
	f := newFixture(t, []runtime.Object{rootConfigMap()}, []runtime.Object{waypointGateway("waypoint")})
	f.round(t)
	ctx := f.ctx

	gc, err := f.gw.GatewayV1().GatewayClasses().Get(ctx, discovery.DefaultWaypointClass, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the controller did not create the waypoint class: %v", err)
	}
	if gc.Spec.ControllerName != DefaultControllerName {
		t.Errorf("class controllerName %q", gc.Spec.ControllerName)
	}
	wantCondition(t, "GatewayClass", gc.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted")

	gw := f.gateway(t, "waypoint")
	ownerOK := func(who string, refs []metav1.OwnerReference) {
		t.Helper()
		if len(refs) != 1 || refs[0].UID != gw.UID || refs[0].Kind != "Gateway" || refs[0].APIVersion != "gateway.networking.k8s.io/v1" ||
			refs[0].Controller == nil || !*refs[0].Controller || refs[0].Name != "waypoint" {
			t.Errorf("%s: ownerReferences %+v, want the Gateway as controller", who, refs)
		}
	}
	sa, err := f.kube.CoreV1().ServiceAccounts(testNS).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ownerOK("ServiceAccount", sa.OwnerReferences)
	cm, err := f.kube.CoreV1().ConfigMaps(testNS).Get(ctx, RootConfigMapName("waypoint"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ownerOK("ConfigMap", cm.OwnerReferences)
	if cm.Data[RootKey] != "ROOT PEM" {
		t.Errorf("root copy %v", cm.Data)
	}
	svc, err := f.kube.CoreV1().Services(testNS).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ownerOK("Service", svc.OwnerReferences)
	if svc.Labels[discovery.LabelGatewayName] != "waypoint" || svc.Spec.Selector[discovery.LabelGatewayName] != "waypoint" {
		t.Errorf("service labels %v selector %v", svc.Labels, svc.Spec.Selector)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 15008 && p.Name == "mesh" }) {
		t.Errorf("service ports %+v, want mesh 15008", svc.Spec.Ports)
	}
	dep, err := f.kube.AppsV1().Deployments(testNS).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ownerOK("Deployment", dep.OwnerReferences)
	checkDeployment(t, dep)
	crb, err := f.kube.RbacV1().ClusterRoleBindings().Get(ctx, ClusterRoleBindingName(testNS, "waypoint"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if crb.RoleRef.Name != WaypointClusterRole || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "waypoint" || crb.Subjects[0].Namespace != testNS {
		t.Errorf("binding %+v %+v", crb.RoleRef, crb.Subjects)
	}

	wantCondition(t, "Gateway", gw.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted")
	wantCondition(t, "Gateway", gw.Status.Conditions, "Programmed", metav1.ConditionFalse, "AddressNotAssigned")

	// The API server allocates the ClusterIP, the Deployment controller reports pods.
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "198.19.0.50", []string{"198.19.0.50"}
	if _, err := f.kube.CoreV1().Services(testNS).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.round(t)
	gw = f.gateway(t, "waypoint")
	pending := wantCondition(t, "Gateway", gw.Status.Conditions, "Programmed", metav1.ConditionFalse, "Pending")
	if !strings.Contains(pending.Message, "0 of 1") {
		t.Errorf("Pending message %q", pending.Message)
	}
	if len(gw.Status.Addresses) != 1 || gw.Status.Addresses[0].Value != "198.19.0.50" {
		t.Errorf("addresses %+v", gw.Status.Addresses)
	}
	dep, _ = f.kube.AppsV1().Deployments(testNS).Get(ctx, "waypoint", metav1.GetOptions{})
	dep.Status.ReadyReplicas, dep.Status.Replicas = 1, 1
	if _, err := f.kube.AppsV1().Deployments(testNS).UpdateStatus(ctx, dep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.round(t)
	gw = f.gateway(t, "waypoint")
	wantCondition(t, "Gateway", gw.Status.Conditions, "Programmed", metav1.ConditionTrue, "Programmed")
	if len(gw.Status.Listeners) != 1 {
		t.Fatalf("listeners %+v", gw.Status.Listeners)
	}
	wantCondition(t, "listener", gw.Status.Listeners[0].Conditions, "Programmed", metav1.ConditionTrue, "Programmed")

	// Steady: reconciling again, as on a resync, writes nothing.
	before := len(writes(f.kube.Actions(), f.gw.Actions()))
	f.round(t)
	f.round(t)
	if w := writes(f.kube.Actions(), f.gw.Actions()); len(w) != before {
		t.Errorf("a steady state wrote %v", w[before:])
	}

	// A changed flag rolls the Deployment, once.
	f.c.cfg.Args = []string{"-log-level=info"}
	f.round(t)
	dep, _ = f.kube.AppsV1().Deployments(testNS).Get(ctx, "waypoint", metav1.GetOptions{})
	if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "-log-level=info") {
		t.Errorf("args not updated: %v", dep.Spec.Template.Spec.Containers[0].Args)
	}
	before = len(writes(f.kube.Actions(), f.gw.Actions()))
	f.round(t)
	if w := writes(f.kube.Actions(), f.gw.Actions()); len(w) != before {
		t.Errorf("after the update a steady state wrote %v", w[before:])
	}

	if err := f.gw.GatewayV1().Gateways(testNS).Delete(ctx, "waypoint", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.settle(t)
	if err := f.c.reconcile(ctx, gwPrefix+testNS+"/waypoint"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Get(ctx, crb.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("binding after the Gateway's deletion: %v, want NotFound", err)
	}
}

func checkDeployment(t *testing.T, dep *appsv1.Deployment) {
	t.Helper()
	spec := dep.Spec.Template.Spec
	if spec.ServiceAccountName != "waypoint" {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	if dep.Spec.Template.Labels[discovery.LabelGatewayName] != "waypoint" {
		t.Errorf("pod labels %v", dep.Spec.Template.Labels)
	}
	ctr := spec.Containers[0]
	if ctr.Image != testConfig.Image {
		t.Errorf("image %q", ctr.Image)
	}
	for _, a := range []string{"-kube", "-name=waypoint", "-namespace=apps", "-ca-addr=" + testConfig.CAAddr,
		"-ca-token-file=/var/run/secrets/ambit/token", "-ca-root-file=/var/run/ambit/ca/root.pem"} {
		if !slices.Contains(ctr.Args, a) {
			t.Errorf("args %v lack %s", ctr.Args, a)
		}
	}
	if ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet == nil || ctr.ReadinessProbe.HTTPGet.Path != "/healthz/ready" || ctr.ReadinessProbe.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("readiness probe %+v", ctr.ReadinessProbe)
	}
	var token *corev1.ServiceAccountTokenProjection
	var root string
	for _, v := range spec.Volumes {
		if v.Projected != nil && len(v.Projected.Sources) == 1 {
			token = v.Projected.Sources[0].ServiceAccountToken
		}
		if v.ConfigMap != nil {
			root = v.ConfigMap.Name
		}
	}
	if token == nil || token.Audience != "ambit-ca" || token.ExpirationSeconds == nil || *token.ExpirationSeconds != 3600 || token.Path != "token" {
		t.Errorf("CA token projection %+v, want audience ambit-ca, 3600 s, path token", token)
	}
	if root != RootConfigMapName("waypoint") {
		t.Errorf("root volume from ConfigMap %q", root)
	}
}

// Invalid waypoint Gateways are not accepted, with the reason, and get nothing.
func TestInvalidGateways(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*gatewayv1.Gateway)
		reason string
		msg    string
	}{
		{"http listener", func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Protocol = "HTTP" }, "ListenersNotValid", "protocol HTTP"},
		{"wrong port", func(g *gatewayv1.Gateway) { g.Spec.Listeners[0].Port = 15009 }, "ListenersNotValid", "port 15009"},
		{"two listeners", func(g *gatewayv1.Gateway) {
			g.Spec.Listeners = append(g.Spec.Listeners, gatewayv1.Listener{Name: "other", Port: 15008, Protocol: "HBONE"})
		}, "ListenersNotValid", "one HBONE listener"},
		{"bad waypoint-for", func(g *gatewayv1.Gateway) { g.Labels = map[string]string{discovery.LabelWaypointFor: "pods"} }, "Invalid", "pods"},
		{"addresses", func(g *gatewayv1.Gateway) {
			g.Spec.Addresses = []gatewayv1.GatewaySpecAddress{{Value: "198.19.0.9"}}
		}, "UnsupportedAddress", "spec.addresses"},
		{"selector expressions", func(g *gatewayv1.Gateway) {
			from := gatewayv1.NamespacesFromSelector
			g.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: &from, Selector: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpExists}},
			}}}
		}, "ListenersNotValid", "matchExpressions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, []runtime.Object{rootConfigMap()}, []runtime.Object{waypointGateway("bad", tc.mutate)})
			f.round(t)
			gw := f.gateway(t, "bad")
			c := wantCondition(t, "Gateway", gw.Status.Conditions, "Accepted", metav1.ConditionFalse, tc.reason)
			if !strings.Contains(c.Message, tc.msg) {
				t.Errorf("Accepted message %q does not say %q", c.Message, tc.msg)
			}
			wantCondition(t, "Gateway", gw.Status.Conditions, "Programmed", metav1.ConditionFalse, "Invalid")
			for _, a := range f.kube.Actions() {
				if a.GetVerb() == "create" {
					t.Errorf("created %s for an invalid Gateway", a.GetResource().Resource)
				}
			}
		})
	}
}

// Gateways of other classes, or of the class when another controller owns it, are
// left alone.
func TestOtherClasses(t *testing.T) {
	foreign := &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: discovery.DefaultWaypointClass},
		Spec: gatewayv1.GatewayClassSpec{ControllerName: "example.com/other"}}
	f := newFixture(t, []runtime.Object{rootConfigMap()}, []runtime.Object{foreign, waypointGateway("a"),
		waypointGateway("b", func(g *gatewayv1.Gateway) { g.Spec.GatewayClassName = "nginx" })})
	f.round(t)
	if w := writes(f.kube.Actions(), f.gw.Actions()); len(w) != 0 {
		t.Errorf("wrote %v for Gateways that are not the controller's", w)
	}
}

// An object in the way that the controller does not manage is a conflict: the
// Gateway is not programmed, says which object, and the object is left as it is.
func TestConflict(t *testing.T) {
	mine := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: testNS, Labels: map[string]string{"team": "x"}}}
	f := newFixture(t, []runtime.Object{rootConfigMap(), mine}, []runtime.Object{waypointGateway("waypoint")})
	f.round(t)
	gw := f.gateway(t, "waypoint")
	c := wantCondition(t, "Gateway", gw.Status.Conditions, "Programmed", metav1.ConditionFalse, "Invalid")
	if !strings.Contains(c.Message, "ServiceAccount apps/waypoint exists") {
		t.Errorf("Programmed message %q does not name the object", c.Message)
	}
	sa, _ := f.kube.CoreV1().ServiceAccounts(testNS).Get(f.ctx, "waypoint", metav1.GetOptions{})
	if len(sa.OwnerReferences) != 0 || sa.Labels[LabelManagedBy] != "" {
		t.Errorf("the user's ServiceAccount was changed: %+v", sa.ObjectMeta)
	}
	// Nothing runs as, or is bound to, the account the controller does not manage.
	if _, err := f.kube.AppsV1().Deployments(testNS).Get(f.ctx, "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Deployment with a conflicting account: %v, want none", err)
	}
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Get(f.ctx, ClusterRoleBindingName(testNS, "waypoint"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("binding to a conflicting account: %v, want none", err)
	}
}

// Without the CA's root the waypoint is pending, and the root copy follows the CA's.
func TestRootConfigMap(t *testing.T) {
	f := newFixture(t, nil, []runtime.Object{waypointGateway("waypoint")})
	f.round(t)
	gw := f.gateway(t, "waypoint")
	c := wantCondition(t, "Gateway", gw.Status.Conditions, "Programmed", metav1.ConditionFalse, "Pending")
	if !strings.Contains(c.Message, "root") {
		t.Errorf("Programmed message %q", c.Message)
	}
	if _, err := f.kube.CoreV1().ConfigMaps(rootNS).Create(f.ctx, rootConfigMap(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.round(t)
	root := rootConfigMap()
	root.Data[RootKey] = "NEW ROOT"
	if _, err := f.kube.CoreV1().ConfigMaps(rootNS).Update(f.ctx, root, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.round(t)
	cm, err := f.kube.CoreV1().ConfigMaps(testNS).Get(f.ctx, RootConfigMapName("waypoint"), metav1.GetOptions{})
	if err != nil || cm.Data[RootKey] != "NEW ROOT" {
		t.Errorf("root copy %v %v, want NEW ROOT", cm, err)
	}
}

// The binding of a Gateway that went while the controller was not running is
// collected.
func TestCollectBindings(t *testing.T) {
	f := newFixture(t, []runtime.Object{rootConfigMap()}, []runtime.Object{waypointGateway("a")})
	f.round(t)
	stale := f.c.cfg.build(waypointGateway("gone"), "").binding
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Create(f.ctx, stale, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.round(t)
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Get(f.ctx, stale.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("stale binding: %v, want NotFound", err)
	}
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Get(f.ctx, ClusterRoleBindingName(testNS, "a"), metav1.GetOptions{}); err != nil {
		t.Errorf("live binding: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// Route statuses: for parentRefs to Services bound to a waypoint, the waypoint
// compiler's Accepted and ResolvedRefs; nothing for unbound Services; routes attached
// to the waypoint Gateway itself are refused; other controllers' entries stay.
func TestRouteStatus(t *testing.T) {
	svc := func(name string, labels map[string]string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Labels: labels},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	}
	bound := map[string]string{discovery.LabelUseWaypoint: "waypoint"}
	svcParent := func(name string) gatewayv1.ParentReference {
		return gatewayv1.ParentReference{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name)}
	}
	backend := func(name string) []gatewayv1.HTTPBackendRef {
		return []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
			Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(80))}}}}
	}
	hr := func(name string, parent gatewayv1.ParentReference, to string) *gatewayv1.HTTPRoute {
		return &gatewayv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Generation: 2},
			Spec: gatewayv1.HTTPRouteSpec{
				CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{parent}},
				Rules:           []gatewayv1.HTTPRouteRule{{BackendRefs: backend(to)}},
			},
		}
	}
	other := gatewayv1.RouteParentStatus{ParentRef: svcParent("web"), ControllerName: "example.com/other",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", LastTransitionTime: metav1.Now()}}}
	good := hr("good", svcParent("web"), "web")
	good.Status.Parents = []gatewayv1.RouteParentStatus{other}
	missing := hr("missing", svcParent("web"), "nothere")
	unbound := hr("unbound", svcParent("plain"), "plain")
	onGateway := hr("on-gateway", gatewayv1.ParentReference{Name: "waypoint"}, "web")
	grpc := &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "grpc", Namespace: testNS, Generation: 1},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent("rpc")}},
			Rules: []gatewayv1.GRPCRouteRule{{BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Namespace: ptr(gatewayv1.Namespace("elsewhere")), Name: "rpc", Port: ptr(gatewayv1.PortNumber(80))},
			}}}}},
		},
	}
	f := newFixture(t,
		[]runtime.Object{rootConfigMap(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, svc("web", bound), svc("rpc", bound), svc("plain", nil)},
		[]runtime.Object{waypointGateway("waypoint"), good, missing, unbound, onGateway, grpc})
	f.round(t)
	get := func(name string) *gatewayv1.HTTPRoute {
		t.Helper()
		r, err := f.gw.GatewayV1().HTTPRoutes(testNS).Get(f.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ours := func(who string, ps []gatewayv1.RouteParentStatus) []gatewayv1.RouteParentStatus {
		var out []gatewayv1.RouteParentStatus
		for _, p := range ps {
			if p.ControllerName == DefaultControllerName {
				out = append(out, p)
			}
		}
		return out
	}
	g := get("good")
	if len(g.Status.Parents) != 2 || g.Status.Parents[0].ControllerName != "example.com/other" {
		t.Errorf("good: parents %+v, want the other controller's entry kept and ours", g.Status.Parents)
	}
	if p := ours("good", g.Status.Parents); len(p) == 1 {
		wantCondition(t, "good", p[0].Conditions, "Accepted", metav1.ConditionTrue, "Accepted")
		c := wantCondition(t, "good", p[0].Conditions, "ResolvedRefs", metav1.ConditionTrue, "ResolvedRefs")
		if c.ObservedGeneration != 2 {
			t.Errorf("observedGeneration %d, want 2", c.ObservedGeneration)
		}
	}
	if p := ours("missing", get("missing").Status.Parents); len(p) != 1 {
		t.Errorf("missing: parents %+v", p)
	} else {
		wantCondition(t, "missing", p[0].Conditions, "ResolvedRefs", metav1.ConditionFalse, "BackendNotFound")
	}
	if p := get("unbound").Status.Parents; len(p) != 0 {
		t.Errorf("unbound: parents %+v, want none (no waypoint)", p)
	}
	if p := ours("on-gateway", get("on-gateway").Status.Parents); len(p) != 1 {
		t.Errorf("on-gateway: parents %+v", p)
	} else {
		wantCondition(t, "on-gateway", p[0].Conditions, "Accepted", metav1.ConditionFalse, "UnsupportedValue")
	}
	gr, err := f.gw.GatewayV1().GRPCRoutes(testNS).Get(f.ctx, "grpc", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := ours("grpc", gr.Status.Parents); len(p) != 1 {
		t.Errorf("grpc: parents %+v", gr.Status.Parents)
	} else {
		wantCondition(t, "grpc", p[0].Conditions, "ResolvedRefs", metav1.ConditionFalse, "RefNotPermitted")
	}

	// Steady, then unbinding the Service takes our entries away.
	before := len(writes(f.gw.Actions()))
	f.round(t)
	if w := writes(f.gw.Actions()); len(w) != before {
		t.Errorf("steady routes wrote %v", w[before:])
	}
	web, _ := f.kube.CoreV1().Services(testNS).Get(f.ctx, "web", metav1.GetOptions{})
	web.Labels = nil
	if _, err := f.kube.CoreV1().Services(testNS).Update(f.ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.round(t)
	if p := get("good").Status.Parents; len(p) != 1 || p[0].ControllerName != "example.com/other" {
		t.Errorf("after unbinding: parents %+v, want only the other controller's", p)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"no image", func(c *Config) { c.Image = "" }, "-waypoint-image"},
		{"no ca", func(c *Config) { c.CAAddr = "" }, "-ca-addr"},
		{"root ref", func(c *Config) { c.CARootConfigMap = "nons" }, "-ca-root-configmap"},
		{"pull policy", func(c *Config) { c.PullPolicy = "Sometimes" }, "Sometimes"},
		{"arg", func(c *Config) { c.Args = []string{"log-level=debug"} }, "not a flag"},
		{"trust domain", func(c *Config) { c.TrustDomain = "Bad Domain" }, "-trust-domain"},
		{"controller name", func(c *Config) { c.ControllerName = "ambit" }, "-controller-name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig
			tc.mut(&cfg)
			_, err := New(cfg, Deps{Kube: kfake.NewClientset(), Gateway: gwfake.NewClientset()})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error naming %s", err, tc.want)
			}
		})
	}
	if _, err := New(testConfig, Deps{Kube: kfake.NewClientset(), Gateway: gwfake.NewClientset()}); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func everything() labels.Selector { return labels.Everything() }

// When the class turns out to be another controller's, the waypoint's binding goes.
func TestClassTakenOver(t *testing.T) {
	f := newFixture(t, []runtime.Object{rootConfigMap()}, []runtime.Object{waypointGateway("waypoint")})
	f.round(t)
	crb := ClusterRoleBindingName(testNS, "waypoint")
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Get(f.ctx, crb, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	gc, err := f.gw.GatewayV1().GatewayClasses().Get(f.ctx, discovery.DefaultWaypointClass, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// (controllerName is immutable in the CRD: in a cluster the class is recreated.)
	gc.Spec.ControllerName = "example.com/other"
	if _, err := f.gw.GatewayV1().GatewayClasses().Update(f.ctx, gc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.round(t)
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Get(f.ctx, crb, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("binding after the class went to another controller: %v, want NotFound", err)
	}
}
