package policy

import (
	"net/netip"
	"testing"
)

// At a waypoint only targetRefs policies apply (its Gateway, its GatewayClass from the
// root namespace, the Service), with their HTTP fields.
func TestForWaypoint(t *testing.T) {
	s := set(t, ap("api", "gw-allow-get", `spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  rules: [{to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]}]`)+
		ap("api", "svc-deny-admin", `spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/admin*"]}}]}]`)+
		ap("istio-system", "class-deny-delete", `spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]`)+
		ap("api", "selector-ztunnel", `spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {principals: ["nobody"]}}]}]`)+
		ap("api", "namespace-wide", `spec: {}`)+
		ap("other", "other-gw", `spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  rules: [{}]`), false)
	req := func(method, path string) *Input {
		return &Input{Principal: frontend, SrcIP: netip.MustParseAddr("198.18.1.10"), DstIP: netip.MustParseAddr("198.19.0.1"), DstPort: 80,
			HTTP: &Request{Host: "reviews.api", Method: method, Path: path}}
	}
	reviews := s.ForWaypoint("api", "waypoint", "istio-waypoint", "api", "reviews")
	if got := len(reviews.Authorizations()); got != 3 {
		t.Fatalf("policies at the waypoint for api/reviews: %d, want gw-allow-get, svc-deny-admin, class-deny-delete", got)
	}
	ratings := s.ForWaypoint("api", "waypoint", "istio-waypoint", "api", "ratings")
	for _, tc := range []struct {
		name  string
		a     *Applied
		in    *Input
		allow bool
	}{
		{"GET /api/x", reviews, req("GET", "/api/x"), true},
		{"POST /api/x: the ALLOW wants GET", reviews, req("POST", "/api/x"), false},
		{"GET /other: no ALLOW matches", reviews, req("GET", "/other"), false},
		{"GET /api/admin: the Service's DENY", reviews, req("GET", "/api/admin/users"), false},
		{"GET /api/admin on another service", ratings, req("GET", "/api/admin/users"), true},
		{"DELETE /api/x: the GatewayClass's DENY", reviews, req("DELETE", "/api/x"), false},
	} {
		if d := tc.a.Evaluate(tc.in); d.Allow != tc.allow {
			t.Errorf("%s: %v, want allow=%v", tc.name, d, tc.allow)
		}
	}
	if got := len(s.ForWaypoint("api", "other-waypoint", "istio-waypoint", "", "").Authorizations()); got != 1 {
		t.Errorf("another waypoint gets %d policies, want only the GatewayClass's", got)
	}
}
