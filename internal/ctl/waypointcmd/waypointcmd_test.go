package waypointcmd

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kfake "k8s.io/client-go/kubernetes/fake"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambitmesh/ambit/discovery"
)

type fakes struct {
	kube *kfake.Clientset
	gw   *gwfake.Clientset
}

func newFakes(t *testing.T) fakes {
	t.Helper()
	kube := kfake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}})
	// Objects are created through the typed client: the simple fake files objects
	// passed to its constructor under v1beta1, where the v1 client does not look.
	return fakes{kube: kube, gw: gwfake.NewSimpleClientset()} //nolint:staticcheck // NewClientset needs an OpenAPI model the fake lacks
}

// run runs ambitctl waypoint args against f and returns the exit status and output.
func (f fakes) run(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut, func(string) (Clients, error) { return Clients{Kube: f.kube, Gateway: f.gw}, nil })
	return code, out.String(), errOut.String()
}

func (f fakes) gateway(t *testing.T, name string) *gatewayv1.Gateway {
	t.Helper()
	g, err := f.gw.GatewayV1().Gateways("apps").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestApply(t *testing.T) {
	f := newFakes(t)
	code, out, errOut := f.run("apply", "-n", "apps", "--for", "all", "--enroll-namespace")
	if code != 0 {
		t.Fatalf("apply: %d %s", code, errOut)
	}
	for _, want := range []string{"waypoint apps/waypoint created", "namespace apps labelled istio.io/use-waypoint=waypoint"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q lacks %q", out, want)
		}
	}
	g := f.gateway(t, "waypoint")
	if g.Spec.GatewayClassName != discovery.DefaultWaypointClass || g.Labels[discovery.LabelWaypointFor] != "all" {
		t.Errorf("gateway %+v", g.ObjectMeta)
	}
	wp, err := discovery.WaypointOf(g)
	if err != nil || wp.For != discovery.WaypointForAll {
		t.Errorf("the written Gateway is not a waypoint for all: %+v %v", wp, err)
	}
	ns, _ := f.kube.CoreV1().Namespaces().Get(context.Background(), "apps", metav1.GetOptions{})
	if ns.Labels[discovery.LabelUseWaypoint] != "waypoint" {
		t.Errorf("namespace labels %v", ns.Labels)
	}

	// Again, with a name and another class for one that exists under another class.
	if code, out, _ := f.run("apply", "-n", "apps", "-for", "service"); code != 0 || !strings.Contains(out, "updated") {
		t.Errorf("re-apply: %d %q", code, out)
	}
	if g := f.gateway(t, "waypoint"); g.Labels[discovery.LabelWaypointFor] != "service" {
		t.Errorf("waypoint-for after re-apply %q", g.Labels[discovery.LabelWaypointFor])
	}
	other := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "ingress", Namespace: "apps"}, Spec: gatewayv1.GatewaySpec{GatewayClassName: "nginx"}}
	if _, err := f.gw.GatewayV1().Gateways("apps").Create(context.Background(), other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := f.run("apply", "-n", "apps", "-name", "ingress"); code != 1 || !strings.Contains(errOut, `class "nginx"`) {
		t.Errorf("apply over a non-waypoint Gateway: %d %q", code, errOut)
	}
}

func TestUsage(t *testing.T) {
	f := newFakes(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"apply"}, "-n NAMESPACE is required"},
		{[]string{"apply", "-n", "apps", "-for", "pods"}, `-for "pods"`},
		{[]string{"apply", "-n", "apps", "extra"}, `unexpected argument "extra"`},
		{[]string{"delete", "-n", "apps"}, "name the waypoints to delete, or -all"},
		{[]string{"delete", "-n", "apps", "-all", "x"}, "not both"},
		{[]string{"list", "-n", "apps", "-A"}, "exclude each other"},
		{[]string{"frob"}, `unknown waypoint command "frob"`},
		{[]string{"list", "-bogus"}, "bogus"},
	} {
		code, _, errOut := f.run(tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: %d %q, want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

func TestListAndDelete(t *testing.T) {
	f := newFakes(t)
	ctx := context.Background()
	for _, args := range [][]string{{"apply", "-n", "apps", "--enroll-namespace"}, {"apply", "-n", "apps", "-name", "second", "-for", "workload"}} {
		if code, _, errOut := f.run(args...); code != 0 {
			t.Fatalf("%v: %s", args, errOut)
		}
	}
	// As the controller would report them.
	g := f.gateway(t, "waypoint")
	ip := gatewayv1.IPAddressType
	g.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: &ip, Value: "198.19.0.40"}}
	g.Status.Conditions = []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted"}, {Type: "Programmed", Status: "True", Reason: "Programmed"}}
	if _, err := f.gw.GatewayV1().Gateways("apps").UpdateStatus(ctx, g, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	g = f.gateway(t, "second")
	g.Status.Conditions = []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted"}, {Type: "Programmed", Status: "False", Reason: "Pending"}}
	if _, err := f.gw.GatewayV1().Gateways("apps").UpdateStatus(ctx, g, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := f.run("list", "-n", "apps")
	if code != 0 {
		t.Fatal(errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME CLASS WAYPOINT-FOR PROGRAMMED ADDRESS" ||
		strings.Join(strings.Fields(lines[1]), " ") != "second istio-waypoint workload False (Pending) -" ||
		strings.Join(strings.Fields(lines[2]), " ") != "waypoint istio-waypoint service True 198.19.0.40" {
		t.Errorf("list:\n%s", out)
	}
	if _, out, _ := f.run("list", "-A"); !strings.HasPrefix(out, "NAMESPACE") {
		t.Errorf("list -A:\n%s", out)
	}

	code, out, errOut = f.run("delete", "-n", "apps", "waypoint")
	if code != 0 {
		t.Fatal(errOut)
	}
	if !strings.Contains(out, "waypoint apps/waypoint deleted") || !strings.Contains(out, "still labelled istio.io/use-waypoint=waypoint") {
		t.Errorf("delete output %q", out)
	}
	if _, err := f.gw.GatewayV1().Gateways("apps").Get(ctx, "waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after delete: %v", err)
	}
	if code, _, errOut := f.run("delete", "-n", "apps", "nothere"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("delete of a missing waypoint: %d %q", code, errOut)
	}
	if code, out, _ := f.run("delete", "-n", "apps", "-all"); code != 0 || !strings.Contains(out, "apps/second deleted") {
		t.Errorf("delete -all: %d %q", code, out)
	}
	if _, out, _ := f.run("list", "-n", "apps"); !strings.Contains(out, "no waypoints in namespace apps") {
		t.Errorf("list after delete -all: %q", out)
	}
}

func TestExplain(t *testing.T) {
	err := explain("create Gateway apps/x", apierrors.NewForbidden(gatewayv1.Resource("gateways"), "x", errors.New("no")))
	if !strings.Contains(err.Error(), "RBAC") || !apierrors.IsForbidden(err) {
		t.Errorf("explain forbidden: %v", err)
	}
}
