package route

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// condOf returns the condition of type typ of parent i.
func condOf(st Status, i int, typ gatewayv1.RouteConditionType) metav1.Condition {
	for _, c := range st.Parents[i].Conditions {
		if c.Type == string(typ) {
			return c
		}
	}
	return metav1.Condition{}
}

func TestInvalidRules(t *testing.T) {
	const (
		acc  = gatewayv1.RouteConditionAccepted
		refs = gatewayv1.RouteConditionResolvedRefs
	)
	tests := []struct {
		name   string
		rules  string
		typ    gatewayv1.RouteConditionType
		reason gatewayv1.RouteConditionReason
		msg    string // a part of the message
	}{
		{"path without slash", `[{matches: [{path: {type: PathPrefix, value: "a"}}]}]`, acc, "UnsupportedValue", "start with '/'"},
		{"path with //", `[{matches: [{path: {type: Exact, value: "/a//b"}}]}]`, acc, "UnsupportedValue", "'//'"},
		{"path with /./", `[{matches: [{path: {value: "/a/./b"}}]}]`, acc, "UnsupportedValue", "'.' segment"},
		{"path ending /..", `[{matches: [{path: {value: "/a/.."}}]}]`, acc, "UnsupportedValue", "'..' segment"},
		{"path with %2F", `[{matches: [{path: {value: "/a%2Fb"}}]}]`, acc, "UnsupportedValue", "%2f"},
		{"path with #", `[{matches: [{path: {value: "/a#b"}}]}]`, acc, "UnsupportedValue", "#"},
		{"path with space", `[{matches: [{path: {value: "/a b"}}]}]`, acc, "UnsupportedValue", "characters"},
		{"path with %00", `[{matches: [{path: {value: "/a%00"}}]}]`, acc, "UnsupportedValue", "%00"},
		{"bad regex", `[{matches: [{path: {type: RegularExpression, value: "(a"}}]}]`, acc, "UnsupportedValue", "regular expression"},
		{"unknown path type", `[{matches: [{path: {type: Glob, value: "/a"}}]}]`, acc, "UnsupportedValue", "Glob"},
		{"bad header regex", `[{matches: [{headers: [{type: RegularExpression, name: a, value: "[z-a]"}]}]}]`, acc, "UnsupportedValue", "regular expression"},
		{"bad header name", `[{matches: [{headers: [{name: "a b", value: x}]}]}]`, acc, "UnsupportedValue", "invalid name"},
		{"bad method", `[{matches: [{method: FETCH}]}]`, acc, "UnsupportedValue", "FETCH"},
		{"duplicate rule names", `[{name: a}, {name: a}]`, acc, "UnsupportedValue", "unique"},
		{"redirect and rewrite", `[{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]}]`, acc, "IncompatibleFilters", "cannot be combined"},
		{"repeated header modifier", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]}]`, acc, "IncompatibleFilters", "repeated"},
		{"redirect with backendRefs", `[{filters: [{type: RequestRedirect, requestRedirect: {}}], backendRefs: [{name: v1, port: 80}]}]`, acc, "IncompatibleFilters", "backendRefs"},
		{"too many filters", "[{filters: [" + strings.Repeat(`{type: RequestMirror, requestMirror: {backendRef: {name: v1, port: 80}}},`, 17) + "]}]", acc, "UnsupportedValue", "at most 16"},
		{"prefix rewrite on exact", `[{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]`, acc, "UnsupportedValue", "exactly one PathPrefix"},
		{"prefix redirect on two matches", `[{matches: [{path: {value: /a}}, {path: {value: /b}}], filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /c}}}]}]`, acc, "UnsupportedValue", "exactly one PathPrefix"},
		{"modifier type mismatch", `[{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /b}}}]}]`, acc, "UnsupportedValue", "ReplaceFullPath"},
		{"rewrite to an unnormalized path", `[{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /a/../b}}}]}]`, acc, "UnsupportedValue", "normalized"},
		{"rewrite bad hostname", `[{filters: [{type: URLRewrite, urlRewrite: {hostname: "Bad_Host"}}]}]`, acc, "UnsupportedValue", "hostname"},
		{"unknown filter", `[{filters: [{type: Teleport}]}]`, acc, "UnsupportedValue", "Teleport"},
		{"filter field mismatch", `[{filters: [{type: RequestHeaderModifier, responseHeaderModifier: {}}]}]`, acc, "UnsupportedValue", "must"},
		{"CORS unsupported", `[{filters: [{type: CORS, cors: {allowOrigins: ["https://a.example"]}}]}]`, acc, "UnsupportedValue", "CORS filter is not supported"},
		{"ExtensionRef unsupported", `[{filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: X, name: x}}]}]`, acc, "UnsupportedValue", "ExtensionRef"},
		{"header set twice", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: "1"}, {name: A, value: "2"}]}}]}]`, acc, "UnsupportedValue", "twice"},
		{"header value with newline", `[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: a, value: "x\r\nInjected: 1"}]}}]}]`, acc, "UnsupportedValue", "CR, LF"},
		{"redirect scheme", `[{filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]}]`, acc, "UnsupportedValue", "ftp"},
		{"redirect code", `[{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]}]`, acc, "UnsupportedValue", "304"},
		{"redirect port", `[{filters: [{type: RequestRedirect, requestRedirect: {port: 70000}}]}]`, acc, "UnsupportedValue", "70000"},
		{"mirror percent", `[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v1, port: 80}, percent: 101}}]}]`, acc, "UnsupportedValue", "101"},
		{"mirror fraction", `[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v1, port: 80}, fraction: {numerator: 2, denominator: 1}}}]}]`, acc, "UnsupportedValue", "2/1"},
		{"mirror both", `[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v1, port: 80}, percent: 1, fraction: {numerator: 1}}}]}]`, acc, "UnsupportedValue", "only one"},
		{"backendRequest above request", `[{timeouts: {request: 1s, backendRequest: 2s}}]`, acc, "UnsupportedValue", "longer"},
		{"bad duration", `[{timeouts: {request: 1.5s}}]`, acc, "UnsupportedValue", "GEP-2257"},
		{"days are not durations", `[{timeouts: {request: 1d}}]`, acc, "UnsupportedValue", "GEP-2257"},
		{"retry code", `[{retry: {codes: [600]}}]`, acc, "UnsupportedValue", "600"},
		{"retry attempts", `[{retry: {attempts: -1}}]`, acc, "UnsupportedValue", "negative"},
		{"negative weight", `[{backendRefs: [{name: v1, port: 80, weight: -1}]}]`, acc, "UnsupportedValue", "weight"},
		{"weight too big", `[{backendRefs: [{name: v1, port: 80, weight: 1000001}]}]`, acc, "UnsupportedValue", "weight"},
		{"backend redirect filter", `[{backendRefs: [{name: v1, port: 80, filters: [{type: RequestRedirect, requestRedirect: {}}]}]}]`, acc, "UnsupportedValue", "backendRef"},
		{"session persistence", `[{sessionPersistence: {sessionName: s}}]`, acc, "UnsupportedValue", "sessionPersistence"},
		{"too many rules", "[" + strings.Repeat("{},", 17) + "]", acc, "UnsupportedValue", "17 rules"},
		{"backend other kind", `[{backendRefs: [{kind: ConfigMap, name: v1, port: 80}]}]`, refs, "InvalidKind", "ConfigMap"},
		{"backend other group", `[{backendRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: v1, port: 80}]}]`, refs, "InvalidKind", "ServiceImport"},
		{"backend other namespace", `[{backendRefs: [{name: svc, namespace: other, port: 80}]}]`, refs, "RefNotPermitted", "ReferenceGrant"},
		{"backend without port", `[{backendRefs: [{name: v1, weight: 10}]}]`, refs, "BackendNotFound", "port is required"},
		{"backend missing", `[{backendRefs: [{name: nope, port: 80}]}]`, refs, "BackendNotFound", "not found"},
		{"backend port missing", `[{backendRefs: [{name: v1, port: 81}]}]`, refs, "BackendNotFound", "no port 81"},
		{"mirror backend missing", `[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nope, port: 80}}}]}]`, refs, "BackendNotFound", "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := fmt.Sprintf(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: default, generation: 7}
spec:
  parentRefs: [{group: "", kind: Service, name: v1}]
  rules: %s
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules: [{backendRefs: [{name: v2, port: 80}]}]
`, tt.rules)
			tab, sts := Compile(decodeRoutes(t, text), nil, testServices, nil)
			if len(sts) != 2 || sts[0].Name != "bad" || sts[0].Generation != 7 || sts[0].Kind != "HTTPRoute" {
				t.Fatalf("statuses = %+v", sts)
			}
			c := condOf(sts[0], 0, tt.typ)
			if c.Status != metav1.ConditionFalse || c.Reason != string(tt.reason) || !strings.Contains(c.Message, tt.msg) || c.ObservedGeneration != 7 {
				t.Errorf("%s = %s %s %q, want False %s containing %q", tt.typ, c.Status, c.Reason, c.Message, tt.reason, tt.msg)
			}
			// The good route is untouched.
			if got := backendOf(t, tab.Lookup("default", "svc", 80), req("GET", "/", "")); got != "v2" {
				t.Errorf("good route -> %s", got)
			}
			if tt.typ == acc && tab.Lookup("default", "v1", 80) != nil {
				t.Error("a rejected route attached")
			}
		})
	}
}

func TestParents(t *testing.T) {
	text := `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: v1, port: 80}
  - {group: core, kind: Service, name: v2, sectionName: http-alt}
  - {group: "", kind: Service, name: v3, port: 81}
  - {group: "", kind: Service, name: v3, sectionName: nope}
  - {group: "", kind: Service, name: missing}
  - {group: "", kind: Service, name: svc, namespace: other}
  - {name: some-gateway}
  - {group: gateway.networking.k8s.io, kind: Gateway, name: gw2}
  rules: [{backendRefs: [{name: v1, port: 80}]}]
`
	tab, sts := Compile(decodeRoutes(t, text), nil, testServices, nil)
	if len(sts) != 1 || len(sts[0].Parents) != 6 {
		t.Fatalf("statuses = %+v (Gateway parents must get no entry)", sts)
	}
	want := []struct {
		ok     bool
		reason string
		msg    string
	}{
		{true, "Accepted", ""},
		{true, "Accepted", ""},
		{false, "NoMatchingParent", "no port 81"},
		{false, "NoMatchingParent", `a port named "nope"`},
		{false, "NoMatchingParent", "not found"},
		{false, "UnsupportedValue", "consumer routes are not supported"},
	}
	for i, w := range want {
		c := condOf(sts[0], i, gatewayv1.RouteConditionAccepted)
		if (c.Status == metav1.ConditionTrue) != w.ok || c.Reason != w.reason || !strings.Contains(c.Message, w.msg) {
			t.Errorf("parent %d: %s %s %q, want %v %s %q", i, c.Status, c.Reason, c.Message, w.ok, w.reason, w.msg)
		}
	}
	for _, tt := range []struct {
		svc  string
		port uint16
		want bool
	}{
		{"v1", 80, true}, {"v1", 8080, false}, {"v2", 8080, true}, {"v2", 80, false}, {"v3", 80, false}, {"svc", 80, false},
	} {
		if got := tab.Lookup("default", tt.svc, tt.port) != nil; got != tt.want {
			t.Errorf("Lookup(%s:%d) attached = %v, want %v", tt.svc, tt.port, got, tt.want)
		}
	}
	if tab.Lookup("other", "svc", 80) != nil {
		t.Error("a consumer route attached")
	}
}

func TestReferenceGrant(t *testing.T) {
	text := `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules: [{backendRefs: [{name: svc, namespace: other, port: 80}]}]
`
	grant := func(kind, ns, name string) *gatewayv1.ReferenceGrant {
		g := &gatewayv1.ReferenceGrant{
			ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "g"},
			Spec: gatewayv1.ReferenceGrantSpec{
				From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: gatewayv1.Kind(kind), Namespace: gatewayv1.Namespace(ns)}},
				To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
			},
		}
		if name != "" {
			n := gatewayv1.ObjectName(name)
			g.Spec.To[0].Name = &n
		}
		return g
	}
	for _, tt := range []struct {
		name  string
		grant *gatewayv1.ReferenceGrant
		ok    bool
	}{
		{"any Service", grant("HTTPRoute", "default", ""), true},
		{"named Service", grant("HTTPRoute", "default", "svc"), true},
		{"other Service", grant("HTTPRoute", "default", "x"), false},
		{"other kind", grant("GRPCRoute", "default", ""), false},
		{"other namespace", grant("HTTPRoute", "elsewhere", ""), false},
		{"no grant", nil, false},
	} {
		tab, sts := Compile(decodeRoutes(t, text), nil, testServices, Grants{tt.grant})
		c := condOf(sts[0], 0, gatewayv1.RouteConditionResolvedRefs)
		rule, _ := tab.Lookup("default", "svc", 80).Match(req("GET", "/", ""))
		b, _ := rule.Pick(0)
		if (c.Status == metav1.ConditionTrue) != tt.ok || (b.Invalid == nil) != tt.ok {
			t.Errorf("%s: ResolvedRefs %s %s, backend invalid %v", tt.name, c.Status, c.Message, b.Invalid)
		}
	}
}

func TestCompileOddInput(t *testing.T) {
	hr := decodeRoutes(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
`)[0]
	// No rules: the CRD default, one rule matching everything with no backend (500).
	tab, sts := Compile([]*gatewayv1.HTTPRoute{nil, hr}, nil, testServices, Grants{nil})
	if len(sts) != 1 {
		t.Fatalf("statuses = %+v", sts)
	}
	rule, ok := tab.Lookup("default", "svc", 80).Match(req("GET", "/any", ""))
	if !ok {
		t.Fatal("the default rule does not match")
	}
	if _, ok := rule.Pick(1); ok {
		t.Error("a rule without backends picked one")
	}
	// No Services at all.
	_, sts = Compile([]*gatewayv1.HTTPRoute{hr}, nil, nil, nil)
	if c := condOf(sts[0], 0, gatewayv1.RouteConditionAccepted); c.Reason != "NoMatchingParent" {
		t.Errorf("without Services: %+v", c)
	}
}
