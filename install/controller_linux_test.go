package install

import (
	"context"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
)

// controllerRules are exactly what the waypoint controller needs (install/controller):
// read the Gateway API and write its statuses, create the GatewayClass, own the
// waypoints' namespaced objects (never delete them: their Gateway's ownerReferences
// do), write and delete the waypoints' ClusterRoleBindings, and bind ambit-waypoint.
var controllerRules = []string{
	"gateway.networking.k8s.io/gatewayclasses:get", "gateway.networking.k8s.io/gatewayclasses:list", "gateway.networking.k8s.io/gatewayclasses:watch", "gateway.networking.k8s.io/gatewayclasses:create",
	"gateway.networking.k8s.io/gateways:get", "gateway.networking.k8s.io/gateways:list", "gateway.networking.k8s.io/gateways:watch",
	"gateway.networking.k8s.io/httproutes:get", "gateway.networking.k8s.io/httproutes:list", "gateway.networking.k8s.io/httproutes:watch",
	"gateway.networking.k8s.io/grpcroutes:get", "gateway.networking.k8s.io/grpcroutes:list", "gateway.networking.k8s.io/grpcroutes:watch",
	"gateway.networking.k8s.io/referencegrants:get", "gateway.networking.k8s.io/referencegrants:list", "gateway.networking.k8s.io/referencegrants:watch",
	"gateway.networking.k8s.io/gatewayclasses/status:update", "gateway.networking.k8s.io/gateways/status:update",
	"gateway.networking.k8s.io/httproutes/status:update", "gateway.networking.k8s.io/grpcroutes/status:update",
	"/namespaces:get", "/namespaces:list", "/namespaces:watch",
	"/services:get", "/services:list", "/services:watch", "/services:create", "/services:update",
	"/serviceaccounts:get", "/serviceaccounts:list", "/serviceaccounts:watch", "/serviceaccounts:create", "/serviceaccounts:update",
	"/configmaps:get", "/configmaps:list", "/configmaps:watch", "/configmaps:create", "/configmaps:update",
	"apps/deployments:get", "apps/deployments:list", "apps/deployments:watch", "apps/deployments:create", "apps/deployments:update",
	"rbac.authorization.k8s.io/clusterrolebindings:get", "rbac.authorization.k8s.io/clusterrolebindings:list", "rbac.authorization.k8s.io/clusterrolebindings:watch",
	"rbac.authorization.k8s.io/clusterrolebindings:create", "rbac.authorization.k8s.io/clusterrolebindings:update", "rbac.authorization.k8s.io/clusterrolebindings:delete",
	"rbac.authorization.k8s.io/clusterroles/ambit-waypoint:bind",
}

func checkControllerRBAC(t *testing.T, m manifest, ns string) {
	t.Helper()
	find[*corev1.ServiceAccount](t, m, ns, "ambit-controller")
	cr := find[*rbacv1.ClusterRole](t, m, "", "ambit-controller")
	checkRules(t, "ClusterRole ambit-controller", cr.Rules, slices.Clone(controllerRules))
	crb := find[*rbacv1.ClusterRoleBinding](t, m, "", "ambit-controller")
	checkBinding(t, "ClusterRoleBinding ambit-controller", crb.RoleRef, crb.Subjects, "ClusterRole", "ambit-controller", ns)
}

// checkController: one non-root, restricted replica, told where the CA, its root and
// the waypoint image are.
func checkController(t *testing.T, m manifest, ns, image string, wantArgs map[string]string) {
	t.Helper()
	d := find[*appsv1.Deployment](t, m, ns, "ambit-controller")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("controller: replicas %v strategy %q, want 1 and Recreate (no leader election)", d.Spec.Replicas, d.Spec.Strategy.Type)
	}
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != "ambit-controller" || spec.HostNetwork {
		t.Errorf("controller: serviceAccountName %q hostNetwork %v", spec.ServiceAccountName, spec.HostNetwork)
	}
	if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("controller: pod securityContext %+v, want non-root", psc)
	}
	_, _, sc := checkContainer(t, "controller", spec, image, wantArgs)
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("controller: securityContext %+v", sc)
	}
	if len(spec.Volumes) != 0 {
		t.Errorf("controller: volumes %+v, want none", spec.Volumes)
	}
	if !isSubset(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("controller: selector %v does not select its pods %v", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}
}

func controllerArgs(ns string) map[string]string {
	return map[string]string{
		"waypoint-class":       "istio-waypoint",
		"controller-name":      "istio.io/mesh-controller",
		"waypoint-image":       "ghcr.io/ambitmesh/waypoint:0.1.0",
		"waypoint-pull-policy": "IfNotPresent",
		"trust-domain":         "cluster.local",
		"ca-addr":              "ambit-ca." + ns + ".svc:15012",
		"ca-root-configmap":    ns + "/" + caRootCM,
		"log-level":            "info",
		"log-json":             "true",
	}
}

// TestRenderController: the controller's values reach its flags, and disabling it
// renders none of its objects.
func TestRenderController(t *testing.T) {
	t.Parallel()
	m := mustRender(t, "mesh-system", "--set", "waypointController.waypoint.args={-log-level=debug,-drain-timeout=1s},waypointController.waypoint.pullPolicy=Always,waypointController.waypoint.image.tag=dev,waypoint.gatewayClass=mesh-waypoint")
	want := controllerArgs("mesh-system")
	want["waypoint-args"] = "-log-level=debug,-drain-timeout=1s"
	want["waypoint-pull-policy"] = "Always"
	want["waypoint-image"] = "ghcr.io/ambitmesh/waypoint:dev"
	want["waypoint-class"] = "mesh-waypoint"
	checkController(t, m, "mesh-system", "ghcr.io/ambitmesh/ambit-controller:0.1.0", want)

	off := mustRender(t, "ambit-system", "--set", "waypointController.enabled=false")
	for _, title := range off.titles() {
		if slices.Contains([]string{"ClusterRole ambit-controller", "ClusterRoleBinding ambit-controller",
			"Deployment ambit-system/ambit-controller", "ServiceAccount ambit-system/ambit-controller"}, title) {
			t.Errorf("waypointController.enabled=false renders %s", title)
		}
	}
}

// checkControllerAccess asks the server, with the controller's own token, what it may
// do, and makes it bind ambit-waypoint (allowed through bind) and another role (refused:
// it holds neither that role's permissions nor bind on it).
func checkControllerAccess(ctx context.Context, t *testing.T, c *kubetest.Cluster, ns string) {
	t.Helper()
	cc := tokenClient(ctx, t, c, ns, "ambit-controller")
	const gw = "gateway.networking.k8s.io"
	var want []access
	for _, r := range []string{"gateways", "httproutes", "grpcroutes", "referencegrants", "gatewayclasses"} {
		want = append(want, access{group: gw, resource: r, verb: "watch", allowed: true},
			access{group: gw, resource: r, verb: "update", ns: "apps", allowed: false},
			access{group: gw, resource: r, verb: "delete", ns: "apps", allowed: false})
	}
	for _, r := range []string{"gateways", "httproutes", "grpcroutes"} {
		want = append(want, access{group: gw, resource: r, sub: "status", verb: "update", ns: "apps", allowed: true},
			access{group: gw, resource: r, sub: "status", verb: "patch", ns: "apps", allowed: false})
	}
	for _, r := range []struct{ group, resource string }{{"", "services"}, {"", "serviceaccounts"}, {"", "configmaps"}, {"apps", "deployments"}} {
		want = append(want,
			access{group: r.group, resource: r.resource, verb: "create", ns: "apps", allowed: true},
			access{group: r.group, resource: r.resource, verb: "update", ns: "apps", allowed: true},
			access{group: r.group, resource: r.resource, verb: "delete", ns: "apps", allowed: false},
			access{group: r.group, resource: r.resource, verb: "deletecollection", ns: "apps", allowed: false})
	}
	want = append(want,
		access{group: gw, resource: "gatewayclasses", verb: "create", allowed: true},
		access{group: gw, resource: "gatewayclasses", sub: "status", verb: "update", allowed: true},
		access{group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", verb: "delete", allowed: true},
		access{group: "rbac.authorization.k8s.io", resource: "clusterroles", verb: "bind", name: "ambit-waypoint", allowed: true},
		access{group: "rbac.authorization.k8s.io", resource: "clusterroles", verb: "bind", name: "cluster-admin", allowed: false},
		access{group: "rbac.authorization.k8s.io", resource: "clusterroles", verb: "escalate", name: "ambit-waypoint", allowed: false},
		access{group: "rbac.authorization.k8s.io", resource: "clusterroles", verb: "update", name: "ambit-waypoint", allowed: false},
		access{group: "rbac.authorization.k8s.io", resource: "roles", verb: "create", ns: "apps", allowed: false},
		access{group: "rbac.authorization.k8s.io", resource: "rolebindings", verb: "create", ns: "apps", allowed: false},
		access{resource: "secrets", verb: "get", ns: "apps", allowed: false},
		access{resource: "secrets", verb: "list", allowed: false},
		access{resource: "pods", verb: "create", ns: "apps", allowed: false},
		access{resource: "pods", verb: "list", allowed: false},
		access{resource: "serviceaccounts", sub: "token", verb: "create", ns: "apps", name: "waypoint", allowed: false},
		access{resource: "serviceaccounts", verb: "impersonate", allowed: false},
		access{resource: "namespaces", verb: "update", name: "apps", allowed: false},
		access{group: "authentication.k8s.io", resource: "tokenreviews", verb: "create", allowed: false},
	)
	checkAccess(ctx, t, "controller", cc, want)

	binding := func(name, role string) *rbacv1.ClusterRoleBinding {
		return &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "apps", Name: "waypoint"}},
		}
	}
	crbs := cc.RbacV1().ClusterRoleBindings()
	if _, err := crbs.Create(ctx, binding("ambit-waypoint:apps:waypoint", "ambit-waypoint"), metav1.CreateOptions{}); err != nil {
		t.Errorf("controller: bind ambit-waypoint: %v", err)
	} else if err := crbs.Delete(ctx, "ambit-waypoint:apps:waypoint", metav1.DeleteOptions{}); err != nil {
		t.Errorf("controller: delete its binding: %v", err)
	}
	// (Binding ambit-controller itself would be allowed: RBAC lets a user bind a role
	// whose permissions it holds.)
	for _, role := range []string{"ambit-ca", "ambit-ztunnel", "cluster-admin"} {
		_, err := crbs.Create(ctx, binding("escalation-"+role, role), metav1.CreateOptions{})
		wantForbidden(t, "controller: bind "+role, err)
		if !apierrors.IsForbidden(err) {
			_ = c.Client().RbacV1().ClusterRoleBindings().Delete(ctx, "escalation-"+role, metav1.DeleteOptions{})
		}
	}
}
