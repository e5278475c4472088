package discovery

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestWaypointBinding(t *testing.T) {
	ip := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	in := Input{
		Namespaces: []*Namespace{
			{Name: "apps", Labels: map[string]string{"istio.io/dataplane-mode": "ambient", LabelUseWaypoint: "wp"}},
			{Name: "other", Labels: map[string]string{"istio.io/dataplane-mode": "ambient", "team": "x"}},
		},
		Waypoints: []*Waypoint{
			{Name: "wp", Namespace: "apps"},
			{Name: "all", Namespace: "apps", For: WaypointForAll, From: FromSelector, Selector: map[string]string{"team": "x"}},
			{Name: "bad", Namespace: "apps", For: "sometimes", Origin: "gw.yaml:3"},
			{Name: "wl", Namespace: "apps", For: WaypointForWorkload},
		},
		Workloads: []*Workload{
			{Name: "wp-pod", Namespace: "apps", ServiceAccount: "wp", IPs: ip("198.18.3.10"), Labels: map[string]string{LabelGatewayName: "wp"}},
			{Name: "echo", Namespace: "apps", IPs: ip("198.18.2.10"), Labels: map[string]string{"app": "echo"}},
			{Name: "pinned", Namespace: "apps", IPs: ip("198.18.2.11"), Labels: map[string]string{LabelUseWaypoint: "wp"}},
			{Name: "o1", Namespace: "other", IPs: ip("198.18.2.12"), Labels: map[string]string{LabelUseWaypoint: "all", LabelUseWaypointNamespace: "apps"}},
			{Name: "o2", Namespace: "other", IPs: ip("198.18.2.13"), Labels: map[string]string{LabelUseWaypoint: "wl", LabelUseWaypointNamespace: "apps"}},
		},
		Services: []*Service{
			{Name: "echo", Namespace: "apps", VIPs: ip("198.19.0.1"), Selector: map[string]string{"app": "echo"}, Ports: []ServicePort{{Port: 80}}},
			{Name: "optout", Namespace: "apps", VIPs: ip("198.19.0.2"), Labels: map[string]string{LabelUseWaypoint: UseWaypointNone}},
			{Name: "missing", Namespace: "other", VIPs: ip("198.19.0.3"), Labels: map[string]string{LabelUseWaypoint: "nope"}},
		},
	}
	s, err := Build(in, EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wpPod := s.WorkloadByUID("apps/wp-pod")
	if wpPod.Enrolled || wpPod.Protocol != ProtocolHBONE || wpPod.Gateway != "apps/wp" || wpPod.Waypoint != "" {
		t.Errorf("waypoint pod: enrolled=%v protocol=%s gateway=%q waypoint=%q; want not captured, HBONE, apps/wp, none",
			wpPod.Enrolled, wpPod.Protocol, wpPod.Gateway, wpPod.Waypoint)
	}
	if wp := s.Waypoint("apps/wp"); wp == nil || len(wp.Pods) != 1 || wp.Pods[0] != wpPod || wp.For != WaypointForService || wp.From != FromSame {
		t.Errorf("waypoint apps/wp = %+v", wp)
	}
	for _, tt := range []struct{ svc, want string }{
		{"apps/echo", "apps/wp"}, // from the namespace label
		{"apps/optout", ""},      // none on the service
		{"other/missing", "other/nope"},
	} {
		ns, name, _ := strings.Cut(tt.svc, "/")
		if got := s.ServiceByName(ns, name).Waypoint; got != tt.want {
			t.Errorf("service %s waypoint %q, want %q", tt.svc, got, tt.want)
		}
	}
	for _, tt := range []struct {
		uid, waypoint string
		behind        []string
	}{
		{"apps/echo", "", []string{"apps/wp"}},         // namespace binding to a service waypoint: not for workloads; behind its service's
		{"apps/pinned", "", nil},                       // explicit, but wp takes services only: a problem
		{"other/o1", "apps/all", []string{"apps/all"}}, // another namespace, admitted by the selector
		{"other/o2", "", nil},                          // apps/wp admits its own namespace only
	} {
		w := s.WorkloadByUID(tt.uid)
		if w.Waypoint != tt.waypoint || !slices.Equal(w.BehindWaypoints, tt.behind) {
			t.Errorf("workload %s: waypoint %q behind %v; want %q %v", tt.uid, w.Waypoint, w.BehindWaypoints, tt.waypoint, tt.behind)
		}
	}
	probs := strings.Join(s.WaypointProblems, "\n")
	for _, want := range []string{
		`gw.yaml:3: waypoint apps/bad: istio.io/waypoint-for="sometimes"`,
		"workload apps/pinned uses waypoint apps/wp, whose istio.io/waypoint-for is \"service\": not bound",
		"workload other/o2 uses waypoint apps/wl, whose allowedRoutes do not admit namespace \"other\"",
		"service other/missing uses waypoint other/nope, which is not declared: its traffic is refused",
	} {
		if !strings.Contains(probs, want) {
			t.Errorf("problems:\n%s\nwant one containing %q", probs, want)
		}
	}
	if strings.Contains(probs, "apps/echo") {
		t.Errorf("an inherited binding of a workload to a service waypoint is reported:\n%s", probs)
	}
}

func TestParseGatewayManifests(t *testing.T) {
	const manifests = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: apps
  labels: {istio.io/waypoint-for: all}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: apps}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: nolistener, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: typo, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listners: []
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: apps}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: apps}
spec: {}
`
	m, err := parseManifests([]policyFile{{name: "m.yaml", data: []byte(manifests)}}, "", DefaultWaypointClass)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.waypoints) != 1 {
		t.Fatalf("waypoints %+v, want apps/waypoint only", m.waypoints)
	}
	if wp := m.waypoints[0]; wp.Ref() != "apps/waypoint" || wp.For != WaypointForAll || wp.From != FromAll || wp.Origin != "m.yaml:1" {
		t.Errorf("waypoint %+v", wp)
	}
	probs := strings.Join(m.waypointProblems, "\n")
	for _, want := range []string{"m.yaml:22: waypoint apps/nolistener has no listener with protocol HBONE on port 15008", `m.yaml:29: json: unknown field "listners"`} {
		if !strings.Contains(probs, want) {
			t.Errorf("problems:\n%s\nwant %q", probs, want)
		}
	}
	if len(m.policyProblems) != 0 || len(m.policies.AuthorizationPolicies()) != 1 {
		t.Errorf("policies %v, problems %v: want deny-all, no problem for the Gateway API objects", m.policies.AuthorizationPolicies(), m.policyProblems)
	}
}
