package route

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambitmesh/ambit/tests/gamma"
)

func decodeGRPCRoutes(tb testing.TB, text string) []*gatewayv1.GRPCRoute {
	tb.Helper()
	return decodeKind[gatewayv1.GRPCRoute](tb, text, KindGRPCRoute)
}

func grpcReq(path string, hdr ...string) *Request {
	r := req("POST", path, "", hdr...)
	r.Port = 7070
	return r
}

// GRPCRoute matches and their precedence (GRPCRouteRule: the longest service,
// then the longest method, then the most header matches).
func TestGRPCRouteMatching(t *testing.T) {
	text := `
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc, port: 7070}]
  rules:
  - matches: [{method: {service: pkg.Echo}}]
    backendRefs: [{name: v1, port: 7070}]
  - matches: [{method: {service: pkg.Echo, method: Say}}]
    backendRefs: [{name: v2, port: 7070}]
  - matches: [{method: {service: pkg.Echo, method: Say}, headers: [{name: canary, value: "yes"}]}]
    backendRefs: [{name: v3, port: 7070}]
  - matches: [{method: {method: Ping}}]
    backendRefs: [{name: v3, port: 7070}]
  - matches: [{method: {type: RegularExpression, service: "pkg\\.v[0-9]+\\..*", method: "Get.*"}}]
    backendRefs: [{name: v2, port: 7070}]
  - matches: [{headers: [{type: RegularExpression, name: tenant, value: "t-[0-9]+"}]}]
    backendRefs: [{name: v1, port: 7070}]
`
	tab, sts := Compile(nil, decodeGRPCRoutes(t, text), testServices, nil)
	requireAccepted(t, sts)
	rs := tab.Lookup("default", "svc", 7070)
	if rs == nil {
		t.Fatal("the GRPCRoute did not attach")
	}
	for _, tc := range []struct {
		path string
		hdr  []string
		want string
	}{
		{"/pkg.Echo/Other", nil, "v1"},
		{"/pkg.Echo/Say", nil, "v2"},                     // service and method beat service only
		{"/pkg.Echo/Say", []string{"canary: yes"}, "v3"}, // and a header match more
		{"/pkg.Echo/Say", []string{"canary: no"}, "v2"},
		{"/any.Svc/Ping", nil, "v3"},
		{"/pkg.v2.Store/GetItem", nil, "v2"},
		{"/pkg.v2.Store/PutItem", nil, "404"},
		{"/pkg.vx.Store/GetItem", nil, "404"},
		{"/other.Svc/Call", []string{"tenant: t-42"}, "v1"},
		{"/other.Svc/Call", []string{"tenant: t-x"}, "404"},
		{"/pkg.Echo", nil, "404"},           // not /service/method
		{"/pkg.Echo/Say/extra", nil, "404"}, // nor this
		{"/pkg.Echo/", nil, "404"},
	} {
		if got := backendOf(t, rs, grpcReq(tc.path, tc.hdr...)); got != tc.want {
			t.Errorf("%s %v -> %s, want %s", tc.path, tc.hdr, got, tc.want)
		}
	}
	rule, ok := rs.Match(grpcReq("/pkg.Echo/Say"))
	if !ok || rule.Kind != KindGRPCRoute || rule.Route != "default/r" {
		t.Errorf("rule = %+v, want kind GRPCRoute of default/r", rule)
	}
}

func TestInvalidGRPCRoutes(t *testing.T) {
	const (
		acc  = gatewayv1.RouteConditionAccepted
		refs = gatewayv1.RouteConditionResolvedRefs
	)
	for _, tt := range []struct {
		name   string
		rules  string
		typ    gatewayv1.RouteConditionType
		reason gatewayv1.RouteConditionReason
		msg    string
	}{
		{"empty method match", `[{matches: [{method: {}}]}]`, acc, "UnsupportedValue", "one or both"},
		{"bad service name", `[{matches: [{method: {service: "a b"}}]}]`, acc, "UnsupportedValue", "not a gRPC service name"},
		{"bad method name", `[{matches: [{method: {service: pkg.S, method: "9x"}}]}]`, acc, "UnsupportedValue", "not a gRPC method name"},
		{"bad regex", `[{matches: [{method: {type: RegularExpression, service: "(a"}}]}]`, acc, "UnsupportedValue", "regular expression"},
		{"unknown match type", `[{matches: [{method: {type: Glob, service: a}}]}]`, acc, "UnsupportedValue", "Glob"},
		{"bad header name", `[{matches: [{headers: [{name: "a b", value: x}]}]}]`, acc, "UnsupportedValue", "invalid name"},
		{"HTTP-only filter", `[{filters: [{type: URLRewrite}]}]`, acc, "UnsupportedValue", "URLRewrite"},
		{"backend missing", `[{backendRefs: [{name: nope, port: 7070}]}]`, refs, "BackendNotFound", "not found"},
		{"backend other namespace", `[{backendRefs: [{name: svc, namespace: other, port: 7070}]}]`, refs, "RefNotPermitted", "ReferenceGrant"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			text := fmt.Sprintf(`
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: bad, namespace: default, generation: 3}
spec:
  parentRefs: [{group: "", kind: Service, name: v1, port: 7070}]
  rules: %s
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: good, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc, port: 7070}]
  rules: [{backendRefs: [{name: v2, port: 7070}]}]
`, tt.rules)
			tab, sts := Compile(nil, decodeGRPCRoutes(t, text), testServices, nil)
			if len(sts) != 2 || sts[0].Name != "bad" || sts[0].Kind != KindGRPCRoute {
				t.Fatalf("statuses = %+v", sts)
			}
			c := condOf(sts[0], 0, tt.typ)
			if c.Status != metav1.ConditionFalse || c.Reason != string(tt.reason) || !strings.Contains(c.Message, tt.msg) || c.ObservedGeneration != 3 {
				t.Errorf("%s = %s %s %q, want False %s containing %q", tt.typ, c.Status, c.Reason, c.Message, tt.reason, tt.msg)
			}
			if got := backendOf(t, tab.Lookup("default", "svc", 7070), grpcReq("/a.B/C")); got != "v2" {
				t.Errorf("good route -> %s", got)
			}
			if tt.typ == acc && tab.Lookup("default", "v1", 7070) != nil {
				t.Error("a rejected route attached")
			}
			if tt.typ == refs {
				rule, ok := tab.Lookup("default", "v1", 7070).Match(grpcReq("/a.B/C"))
				if !ok {
					t.Fatal("a route with an unresolved backend did not attach")
				}
				if b, _ := rule.Pick(0); b.Invalid == nil {
					t.Error("the unresolved backend is not marked invalid (the proxy answers UNAVAILABLE for it)")
				}
			}
		})
	}
}

// Where an HTTPRoute and a GRPCRoute attach to one Service port, the older route's
// kind wins it and the other is told why.
func TestHTTPAndGRPCRouteOnOnePort(t *testing.T) {
	h := decodeRoutes(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: default, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: svc, port: 7070}]
  rules: [{backendRefs: [{name: v1, port: 7070}]}]
`)
	g := decodeGRPCRoutes(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: svc, port: 7070}]
  rules: [{backendRefs: [{name: v2, port: 7070}]}]
`)
	tab, sts := Compile(h, g, testServices, nil)
	if got := backendOf(t, tab.Lookup("default", "svc", 7070), grpcReq("/a.B/C")); got != "v2" {
		t.Errorf("-> %s, want the older GRPCRoute's v2", got)
	}
	for _, st := range sts {
		c := condOf(st, 0, gatewayv1.RouteConditionAccepted)
		if want := st.Kind == KindGRPCRoute; (c.Status == metav1.ConditionTrue) != want {
			t.Errorf("%s %s: Accepted=%s %s %q", st.Kind, st.Name, c.Status, c.Reason, c.Message)
		}
	}
}

// MeshGRPCRouteWeight: 70/30 over echo-v1/echo-v2, echo-v3 at weight 0 never chosen;
// the conformance module's own manifest.
func TestMeshConformanceGRPCWeight(t *testing.T) {
	dir := conformanceDir(t)
	tab, _ := Compile(nil, decodeGRPCRoutes(t, gamma.Manifest(t, dir, "grpcroute-weight.yaml")), conformanceServices(t, dir), nil)
	rs := tab.Lookup("gateway-conformance-mesh", "echo", 7070)
	if rs == nil {
		t.Fatal("the GRPCRoute did not attach to echo:7070")
	}
	rule, ok := rs.Match(grpcReq("/grpc.testing.TestService/EmptyCall"))
	if !ok {
		t.Fatal("no match")
	}
	rng := rand.New(rand.NewPCG(5, 6))
	got := map[string]int{}
	for range 10000 {
		b, _ := rule.Pick(rng.Uint64())
		got[b.Name]++
	}
	if v1 := float64(got["echo-v1"]) / 10000; v1 < 0.65 || v1 > 0.75 || got["echo-v3"] != 0 || got["echo-v1"]+got["echo-v2"] != 10000 {
		t.Errorf("distribution %v, want 70/30 and no echo-v3", got)
	}
}
