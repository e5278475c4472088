package kubee2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/install/controller"
	"github.com/ambitmesh/ambit/tests/mesh"
)

// lockedBuffer collects the controller's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// writeCounter counts the controller's requests that are not reads.
type writeCounter struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (w writeCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.n.Add(1)
	}
	return w.rt.RoundTrip(r)
}

// startController runs the waypoint controller in the test process as the chart's
// ambit-controller service account (its own token, so the chart's RBAC applies), until
// the test ends. It returns the controller's log and the count of its writes.
func startController(t *testing.T) (*lockedBuffer, *atomic.Int64) {
	t.Helper()
	ctx := context.Background()
	tok, err := m.Kube.ServiceAccountToken(ctx, mesh.SystemNamespace, "ambit-controller", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	rc := m.Kube.TokenConfig(tok)
	writes := new(atomic.Int64)
	rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return writeCounter{rt, writes} }
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gwclient.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	log := &lockedBuffer{}
	c, err := controller.New(controller.Config{
		Image: "ghcr.io/ambitmesh/waypoint:test", TrustDomain: mesh.TrustDomain,
		CAAddr: "ambit-ca.ambit-system.svc:15012", CARootConfigMap: mesh.SystemNamespace + "/" + mesh.RootConfigMap,
		// Short, so that the test sees resyncs write nothing.
		Resync: time.Second,
	}, controller.Deps{Kube: kube, Gateway: gw, Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("controller: %v", err)
		}
		if t.Failed() {
			t.Logf("controller log:\n%s", log.String())
		}
	})
	return log, writes
}

// ambitctl runs the built ambitctl with the admin's kubeconfig from the underlay (where
// the API server is reachable), as an operator's shell would.
func ambitctl(t *testing.T, args ...string) string {
	t.Helper()
	kubeconfig := filepath.Join(m.Dir, "admin.kubeconfig")
	if err := m.Kube.WriteKubeconfig(kubeconfig, ""); err != nil {
		t.Fatal(err)
	}
	args = append(append([]string{"waypoint"}, args...), "-kubeconfig", kubeconfig)
	out, err := m.Topo.Underlay.Command(context.Background(), filepath.Join(m.Bin, "ambitctl"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ambitctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// eventually retries check until it returns nil, failing t with its last error after
// a while.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func programmedStatus(gw *gatewayv1.Gateway) error {
	c := apimeta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed))
	if c == nil || c.Status != metav1.ConditionTrue {
		return fmt.Errorf("Programmed %+v", c)
	}
	return nil
}

// The waypoint controller end to end: `ambitctl waypoint apply` declares a waypoint, the
// controller creates its objects owned by the Gateway and binds the waypoint role; the
// test plays kubelet and Deployment controller for the waypoint's pod, which runs the
// real waypoint process reading the API with the controller-made binding; the Gateway
// turns Programmed with its Service's address, HTTP goes through it, a route to a
// missing backend gets ResolvedRefs=False; `ambitctl waypoint delete` removes the
// Gateway, the controller deletes the binding and traffic is refused.
func TestKubeWaypointController(t *testing.T) {
	requireMesh(t)
	ctx := context.Background()
	gc := gatewayClient(t)
	seen := withWeb(t)
	enroll(t)
	// Cleaned up after the controller stops (cleanups run last first).
	t.Cleanup(func() { cleanupWaypointObjects(t, gc) })
	ctlLog, writes := startController(t)

	out := ambitctl(t, "apply", "-n", appNS, "-name", waypointName)
	if !strings.Contains(out, "waypoint apps/waypoint created") {
		t.Errorf("ambitctl waypoint apply said %q", out)
	}
	gw, err := gc.GatewayV1().Gateways(appNS).Get(ctx, waypointName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The controller's objects, owned by the Gateway (the test cluster has no garbage
	// collector: these references are what deletes them in a real one).
	owned := func(who string, o metav1.Object) {
		t.Helper()
		refs := o.GetOwnerReferences()
		if len(refs) != 1 || refs[0].UID != gw.UID || refs[0].Kind != "Gateway" || refs[0].APIVersion != gatewayv1.GroupVersion.String() ||
			refs[0].Name != waypointName || refs[0].Controller == nil || !*refs[0].Controller {
			t.Errorf("%s: ownerReferences %+v, want Gateway %s (uid %s) as controller", who, refs, waypointName, gw.UID)
		}
	}
	var sa *corev1.ServiceAccount
	eventually(t, "the waypoint's objects", func() error {
		if sa, err = kc.CoreV1().ServiceAccounts(appNS).Get(ctx, waypointName, metav1.GetOptions{}); err != nil {
			return err
		}
		if _, err := kc.AppsV1().Deployments(appNS).Get(ctx, waypointName, metav1.GetOptions{}); err != nil {
			return err
		}
		if _, err := kc.CoreV1().Services(appNS).Get(ctx, waypointName, metav1.GetOptions{}); err != nil {
			return err
		}
		if _, err := kc.CoreV1().ConfigMaps(appNS).Get(ctx, controller.RootConfigMapName(waypointName), metav1.GetOptions{}); err != nil {
			return err
		}
		_, err := kc.RbacV1().ClusterRoleBindings().Get(ctx, controller.ClusterRoleBindingName(appNS, waypointName), metav1.GetOptions{})
		return err
	})
	owned("ServiceAccount", sa)
	dep, _ := kc.AppsV1().Deployments(appNS).Get(ctx, waypointName, metav1.GetOptions{})
	owned("Deployment", dep)
	svc, _ := kc.CoreV1().Services(appNS).Get(ctx, waypointName, metav1.GetOptions{})
	owned("Service", svc)
	root, _ := kc.CoreV1().ConfigMaps(appNS).Get(ctx, controller.RootConfigMapName(waypointName), metav1.GetOptions{})
	owned("ConfigMap", root)
	caRoot, err := kc.CoreV1().ConfigMaps(mesh.SystemNamespace).Get(ctx, mesh.RootConfigMap, metav1.GetOptions{})
	if err != nil || root.Data["root.pem"] == "" || root.Data["root.pem"] != caRoot.Data["root.pem"] {
		t.Errorf("root copy %q, want the CA's published root (%v)", root.Data["root.pem"], err)
	}
	crb, _ := kc.RbacV1().ClusterRoleBindings().Get(ctx, controller.ClusterRoleBindingName(appNS, waypointName), metav1.GetOptions{})
	if crb.RoleRef.Name != "ambit-waypoint" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != waypointName || crb.Subjects[0].Namespace != appNS {
		t.Errorf("binding %+v to %+v, want ambit-waypoint to apps/waypoint", crb.RoleRef, crb.Subjects)
	}
	checkWaypointDeployment(t, dep.Spec.Template.Spec)
	if len(svc.Spec.ClusterIPs) == 0 || !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 15008 }) {
		t.Fatalf("waypoint Service %+v", svc.Spec)
	}
	eventually(t, "Programmed=False while no pod is ready", func() error {
		g, err := gc.GatewayV1().Gateways(appNS).Get(ctx, waypointName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := apimeta.FindStatusCondition(g.Status.Conditions, "Programmed")
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != "Pending" {
			return fmt.Errorf("Programmed %+v", c)
		}
		return nil
	})

	// Kubelet: the Deployment's pod on node1's second netns pod, running the real waypoint
	// as the controller's service account, reading the API with it.
	kubeconfig, err := m.WriteServiceAccountKubeconfig(ctx, appNS, sa.Name)
	if err != nil {
		t.Fatal(err)
	}
	wpPod := startControllerPod(t, dep.Spec.Template, kubeconfig)
	// The Deployment controller: one ready replica.
	dep.Status.Replicas, dep.Status.ReadyReplicas, dep.Status.AvailableReplicas, dep.Status.UpdatedReplicas = 1, 1, 1, 1
	if _, err := kc.AppsV1().Deployments(appNS).UpdateStatus(ctx, dep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Gateway Programmed with its address", func() error {
		g, err := gc.GatewayV1().Gateways(appNS).Get(ctx, waypointName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := programmedStatus(g); err != nil {
			return err
		}
		if len(g.Status.Addresses) != 1 || g.Status.Addresses[0].Value != svc.Spec.ClusterIP {
			return fmt.Errorf("addresses %+v, want %s", g.Status.Addresses, svc.Spec.ClusterIP)
		}
		return nil
	})
	if out := ambitctl(t, "list", "-n", appNS); !strings.Contains(strings.Join(strings.Fields(out), " "), "waypoint istio-waypoint service True "+svc.Spec.ClusterIP) {
		t.Errorf("ambitctl waypoint list:\n%s", out)
	}
	class, err := gc.GatewayV1().GatewayClasses().Get(ctx, discovery.DefaultWaypointClass, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := apimeta.FindStatusCondition(class.Status.Conditions, "Accepted"); class.Spec.ControllerName != controller.DefaultControllerName || c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("GatewayClass %s: controller %q, Accepted %+v", class.Name, class.Spec.ControllerName, c)
	}

	checkSteady(t, gc, writes)

	bindWeb(t)
	waitBound(t, 1)
	body := waitWeb(t, "/controller")
	if !strings.Contains(body, "from="+client.IP.String()+":") {
		t.Errorf("the server saw %q, want the client's address %s", body, client.IP)
	}
	if err := mesh.WaitOutput(m.Waypoint(wpPod), `msg=request`, "path=/controller", "response_code=200"); err != nil {
		t.Error(err)
	}

	checkMissingBackendStatus(t, gc)

	out = ambitctl(t, "delete", "-n", appNS, waypointName)
	if !strings.Contains(out, "waypoint apps/waypoint deleted") {
		t.Errorf("ambitctl waypoint delete said %q", out)
	}
	eventually(t, "the controller deletes the ClusterRoleBinding", func() error {
		_, err := kc.RbacV1().ClusterRoleBindings().Get(ctx, crb.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	// The line follows the deletion the API server already shows.
	eventually(t, "the controller logs the binding's deletion", func() error {
		if !strings.Contains(ctlLog.String(), "deleted the ClusterRoleBinding of a gone waypoint") {
			return errors.New("not logged")
		}
		return nil
	})
	refusedWeb(t, seen, "/gone", "is not declared")
}

// checkSteady: once programmed, resyncs (every second here) write nothing: the
// controller sends no write request, and the objects' and statuses' resourceVersions
// stay as they are over several of them.
func checkSteady(t *testing.T, gc gwclient.Interface, writes *atomic.Int64) {
	t.Helper()
	ctx := context.Background()
	versions := func() map[string]string {
		t.Helper()
		v := map[string]string{}
		add := func(what string, o metav1.Object, err error) {
			if err != nil {
				t.Fatalf("get %s: %v", what, err)
			}
			v[what] = o.GetResourceVersion()
		}
		g, err := gc.GatewayV1().Gateways(appNS).Get(ctx, waypointName, metav1.GetOptions{})
		add("Gateway", g, err)
		cl, err := gc.GatewayV1().GatewayClasses().Get(ctx, discovery.DefaultWaypointClass, metav1.GetOptions{})
		add("GatewayClass", cl, err)
		d, err := kc.AppsV1().Deployments(appNS).Get(ctx, waypointName, metav1.GetOptions{})
		add("Deployment", d, err)
		s, err := kc.CoreV1().Services(appNS).Get(ctx, waypointName, metav1.GetOptions{})
		add("Service", s, err)
		sa, err := kc.CoreV1().ServiceAccounts(appNS).Get(ctx, waypointName, metav1.GetOptions{})
		add("ServiceAccount", sa, err)
		cm, err := kc.CoreV1().ConfigMaps(appNS).Get(ctx, controller.RootConfigMapName(waypointName), metav1.GetOptions{})
		add("ConfigMap", cm, err)
		b, err := kc.RbacV1().ClusterRoleBindings().Get(ctx, controller.ClusterRoleBindingName(appNS, waypointName), metav1.GetOptions{})
		add("ClusterRoleBinding", b, err)
		return v
	}
	before, n := versions(), writes.Load()
	if n == 0 {
		t.Fatal("the write counter saw none of the controller's creates")
	}
	time.Sleep(3500 * time.Millisecond) // three resyncs of every informer
	if after := versions(); !maps.Equal(before, after) {
		t.Errorf("resyncs wrote: resourceVersions %v, then %v", before, after)
	}
	if d := writes.Load() - n; d != 0 {
		t.Errorf("the controller sent %d write requests over three resyncs of a steady state", d)
	}
}

// checkWaypointDeployment: the pod template runs the waypoint as the Gateway's account
// with the CA token the real CA needs (projected, audience ambit-ca, 1 h).
func checkWaypointDeployment(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	if spec.ServiceAccountName != waypointName || len(spec.Containers) != 1 {
		t.Fatalf("pod spec: account %q, %d containers", spec.ServiceAccountName, len(spec.Containers))
	}
	args := spec.Containers[0].Args
	for _, a := range []string{"-kube", "-name=" + waypointName, "-namespace=" + appNS, "-ca-token-file=" + controller.TokenFile, "-ca-root-file=" + controller.RootFile} {
		if !slices.Contains(args, a) {
			t.Errorf("waypoint args %v lack %s", args, a)
		}
	}
	var tok *corev1.ServiceAccountTokenProjection
	for _, v := range spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					tok = s.ServiceAccountToken
				}
			}
		}
	}
	if tok == nil || tok.Audience != "ambit-ca" || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != 3600 {
		t.Errorf("CA token projection %+v, want audience ambit-ca for 3600 s", tok)
	}
	if p := spec.Containers[0].ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" {
		t.Errorf("readiness probe %+v", p)
	}
}

// startControllerPod stands in for the kubelet: a pod from the Deployment's template on
// node1's second netns pod, Ready, running the waypoint in Kubernetes mode with its
// own pod's token for the CA (audience ambit-ca, as the Deployment projects it).
func startControllerPod(t *testing.T, tmpl corev1.PodTemplateSpec, kubeconfig string) string {
	t.Helper()
	ctx := context.Background()
	p := m.Topo.Nodes[0].Pods[1]
	if err := m.RoutePodsToControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	const name = "waypoint-ctl-0"
	if err := createPod(ctx, name, tmpl.Spec.ServiceAccountName, p, tmpl.Labels); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		if err := kc.CoreV1().Pods(appNS).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Error(err)
		}
	})
	pod, err := kc.CoreV1().Pods(appNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := kc.CoreV1().Pods(appNS).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	token, err := m.PodCAToken(ctx, appNS, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.StartKubeWaypoint(ctx, p, appNS, waypointName, tmpl.Spec.ServiceAccountName, kubeconfig, token); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.StopWaypoint(p.Name) })
	return p.Name
}

// checkMissingBackendStatus: an HTTPRoute on the bound Service to a backend that does
// not exist gets, from the controller, Accepted=True and ResolvedRefs=False
// (BackendNotFound).
func checkMissingBackendStatus(t *testing.T, gc gwclient.Interface) {
	t.Helper()
	ctx := context.Background()
	group, kind, port := gatewayv1.Group(""), gatewayv1.Kind("Service"), gatewayv1.PortNumber(80)
	hr := &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "to-nowhere", Namespace: appNS},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: &group, Kind: &kind, Name: "web"}}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Name: "nothere", Port: &port},
			}}}}},
		},
	}
	if _, err := gc.GatewayV1().HTTPRoutes(appNS).Create(ctx, hr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := gc.GatewayV1().HTTPRoutes(appNS).Delete(ctx, hr.Name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}()
	eventually(t, "route status", func() error {
		r, err := gc.GatewayV1().HTTPRoutes(appNS).Get(ctx, hr.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, ps := range r.Status.Parents {
			if ps.ControllerName != controller.DefaultControllerName {
				continue
			}
			acc := apimeta.FindStatusCondition(ps.Conditions, "Accepted")
			res := apimeta.FindStatusCondition(ps.Conditions, "ResolvedRefs")
			if acc == nil || acc.Status != metav1.ConditionTrue || res == nil || res.Status != metav1.ConditionFalse || res.Reason != "BackendNotFound" {
				return fmt.Errorf("conditions %+v, want Accepted=True, ResolvedRefs=False (BackendNotFound)", ps.Conditions)
			}
			return nil
		}
		return fmt.Errorf("no status from %s: %+v", controller.DefaultControllerName, r.Status.Parents)
	})

	// A GRPCRoute on the same port, younger (or, created within the same second, after
	// it by name): the HTTPRoute keeps the port, and the GRPCRoute is told so.
	gr := &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "web-grpc", Namespace: appNS},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: &group, Kind: &kind, Name: "web"}}},
			Rules: []gatewayv1.GRPCRouteRule{{BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Name: "web", Port: &port},
			}}}}},
		},
	}
	if _, err := gc.GatewayV1().GRPCRoutes(appNS).Create(ctx, gr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := gc.GatewayV1().GRPCRoutes(appNS).Delete(ctx, gr.Name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}()
	eventually(t, "GRPCRoute status", func() error {
		r, err := gc.GatewayV1().GRPCRoutes(appNS).Get(ctx, gr.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, ps := range r.Status.Parents {
			if ps.ControllerName != controller.DefaultControllerName {
				continue
			}
			if acc := apimeta.FindStatusCondition(ps.Conditions, "Accepted"); acc == nil || acc.Status != metav1.ConditionFalse || !strings.Contains(acc.Message, "to-nowhere") {
				return fmt.Errorf("conditions %+v, want Accepted=False naming HTTPRoute to-nowhere", ps.Conditions)
			}
			return nil
		}
		return fmt.Errorf("no status from %s: %+v", controller.DefaultControllerName, r.Status.Parents)
	})
}

// cleanupWaypointObjects does what the garbage collector would (the test cluster has
// none): the controller's objects of the deleted Gateway go, and so do the Gateway and
// the class if the test ended early.
func cleanupWaypointObjects(t *testing.T, gc gwclient.Interface) {
	ctx := context.Background()
	notFound := func(err error) error {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	for _, err := range []error{
		notFound(gc.GatewayV1().Gateways(appNS).Delete(ctx, waypointName, metav1.DeleteOptions{})),
		notFound(kc.AppsV1().Deployments(appNS).Delete(ctx, waypointName, metav1.DeleteOptions{})),
		notFound(kc.CoreV1().Services(appNS).Delete(ctx, waypointName, metav1.DeleteOptions{})),
		notFound(kc.CoreV1().ConfigMaps(appNS).Delete(ctx, controller.RootConfigMapName(waypointName), metav1.DeleteOptions{})),
		notFound(kc.RbacV1().ClusterRoleBindings().Delete(ctx, controller.ClusterRoleBindingName(appNS, waypointName), metav1.DeleteOptions{})),
		notFound(gc.GatewayV1().GatewayClasses().Delete(ctx, discovery.DefaultWaypointClass, metav1.DeleteOptions{})),
	} {
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	if err := notFound(kc.CoreV1().ServiceAccounts(appNS).Delete(ctx, waypointName, metav1.DeleteOptions{})); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}
