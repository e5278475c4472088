package route

import (
	"fmt"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestMatchTypes(t *testing.T) {
	tab := mustCompile(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: Exact, value: /exact/}}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /pre/}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: x-env, value: prod}]}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{type: RegularExpression, name: X-Env, value: "st.*"}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: a, value: "1 2"}]}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{type: RegularExpression, name: b, value: "[xy]"}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m}, method: POST}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /host}, headers: [{name: Host, value: "svc.default"}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: Exact, value: /%7Eenc}}]
    backendRefs: [{name: v3, port: 80}]
`)
	rs := tab.Lookup("default", "svc", 80)
	host := req("GET", "/host", "")
	host.Host = "svc.default"
	tests := []struct {
		name string
		r    *Request
		want string
	}{
		{"exact", req("GET", "/exact", ""), "v1"},
		{"exact is not a prefix", req("GET", "/exact/x", ""), "404"},
		{"exact trailing slash differs", req("GET", "/exact/", ""), "v2"},
		{"prefix bare", req("GET", "/pre", ""), "v1"},
		{"prefix slash", req("GET", "/pre/", ""), "v1"},
		{"prefix deeper", req("GET", "/pre/a/b", ""), "v1"},
		{"prefix is element-wise", req("GET", "/prefix", ""), "404"},
		{"regex full match", req("GET", "/re/123", ""), "v2"},
		{"regex is anchored", req("GET", "/re/123/x", ""), "404"},
		{"header exact, name case-insensitive", req("GET", "/h", "", "X-ENV: prod"), "v1"},
		{"header value is case-sensitive", req("GET", "/h", "", "X-Env: Prod"), "404"},
		{"header regex", req("GET", "/h", "", "X-Env: staging"), "v2"},
		{"repeated header, one value matches", req("GET", "/h", "", "X-Env: dev", "X-Env: prod"), "v1"},
		{"joined values are not a value", req("GET", "/h", "", "X-Env: dev,prod"), "404"},
		{"header missing", req("GET", "/h", ""), "404"},
		{"query exact decoded", req("GET", "/q", "z=0&a=1+2"), "v1"},
		{"query exact escaped", req("GET", "/q", "a=1%202"), "v1"},
		{"query repeated", req("GET", "/q", "a=0&a=1%202"), "v1"},
		{"query regex", req("GET", "/q", "b=y"), "v2"},
		{"query regex anchored", req("GET", "/q", "b=xy"), "404"},
		{"query name case-sensitive", req("GET", "/q", "A=1+2"), "404"},
		{"query bad escape ignored", req("GET", "/q", "a=%zz"), "404"},
		{"method", req("POST", "/m", ""), "v1"},
		{"method mismatch", req("GET", "/m", ""), "404"},
		{"Host header match reads Request.Host", host, "v2"},
		{"Host mismatch", req("GET", "/host", ""), "404"},
		{"match value is normalized", req("GET", "/~enc", ""), "v3"},
	}
	for _, tt := range tests {
		if got := backendOf(t, rs, tt.r); got != tt.want {
			t.Errorf("%s: %s %s?%s -> %q, want %q", tt.name, tt.r.Method, tt.r.Path, tt.r.RawQuery, got, tt.want)
		}
	}
}

func TestPrecedence(t *testing.T) {
	tab := mustCompile(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-newer, namespace: default, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - name: catch-all
    backendRefs: [{name: v1, port: 80}]
  - name: prefix-long
    matches: [{path: {type: PathPrefix, value: /a/b}}]
    backendRefs: [{name: v1, port: 80}]
  - name: tie-newer
    matches: [{path: {type: PathPrefix, value: /tie}}]
    backendRefs: [{name: v1, port: 80}]
  - name: name-b
    matches: [{path: {type: PathPrefix, value: /name}}]
    backendRefs: [{name: v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-older, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - name: exact
    matches: [{path: {type: Exact, value: /a/b/c}}]
    backendRefs: [{name: v1, port: 80}]
  - name: prefix-short
    matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: v1, port: 80}]
  - name: regex
    matches: [{path: {type: RegularExpression, value: "/a/b/c.*"}}]
    backendRefs: [{name: v1, port: 80}]
  - name: method
    matches: [{path: {type: PathPrefix, value: /p}, method: GET}]
    backendRefs: [{name: v1, port: 80}]
  - name: headers-1
    matches: [{path: {type: PathPrefix, value: /p}, headers: [{name: a, value: "1"}]}]
    backendRefs: [{name: v1, port: 80}]
  - name: headers-2
    matches: [{path: {type: PathPrefix, value: /p}, headers: [{name: a, value: "1"}, {name: b, value: "1"}]}]
    backendRefs: [{name: v1, port: 80}]
  - name: query-1
    matches: [{path: {type: PathPrefix, value: /p}, headers: [{name: a, value: "1"}, {name: b, value: "1"}], queryParams: [{name: q, value: "1"}]}]
    backendRefs: [{name: v1, port: 80}]
  - name: tie-older
    matches: [{path: {type: PathPrefix, value: /tie}}]
    backendRefs: [{name: v1, port: 80}]
  - name: first
    matches: [{path: {type: PathPrefix, value: /order}}]
    backendRefs: [{name: v1, port: 80}]
  - name: second
    matches: [{path: {type: PathPrefix, value: /order}}]
    backendRefs: [{name: v1, port: 80}]
  - name: regex-only
    matches: [{path: {type: RegularExpression, value: "/rx/.*"}}]
    backendRefs: [{name: v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: c-same-time, namespace: default, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - name: name-c
    matches: [{path: {type: PathPrefix, value: /name}}]
    backendRefs: [{name: v1, port: 80}]
`)
	rs := tab.Lookup("default", "svc", 80)
	tests := []struct {
		r    *Request
		want string // "route/rule"
	}{
		{req("GET", "/a/b/c", ""), "a-older/exact"},                   // Exact beats longer prefix and regex
		{req("GET", "/a/b/c/d", ""), "b-newer/prefix-long"},           // longest prefix beats a regex that matches
		{req("GET", "/a/x", ""), "a-older/prefix-short"},              //
		{req("GET", "/zzz", ""), "b-newer/catch-all"},                 //
		{req("GET", "/rx/1", ""), "b-newer/catch-all"},                // every prefix, even "/", ranks before a regex
		{req("GET", "/p", "q=1", "A: 1", "B: 1"), "a-older/method"},   // method beats headers and query
		{req("POST", "/p", "q=1", "A: 1", "B: 1"), "a-older/query-1"}, // then headers (tie 2-2), then query count
		{req("POST", "/p", "", "A: 1", "B: 1"), "a-older/headers-2"},  // most headers
		{req("POST", "/p", "", "A: 1"), "a-older/headers-1"},          //
		{req("GET", "/tie", ""), "a-older/tie-older"},                 // oldest route
		{req("GET", "/name", ""), "b-newer/name-b"},                   // same time: namespace/name order
		{req("GET", "/order", ""), "a-older/first"},                   // first rule in list order
	}
	for _, tt := range tests {
		rule, ok := rs.Match(tt.r)
		got := "404"
		if ok {
			got = rule.Route[len("default/"):] + "/" + rule.Name
		}
		if got != tt.want {
			t.Errorf("%s %s?%s %v -> %s, want %s", tt.r.Method, tt.r.Path, tt.r.RawQuery, tt.r.Header, got, tt.want)
		}
	}
}

// TestPrecedencePerMatch checks that each match of a rule ranks on its own
// (MeshHTTPRouteMatching's "/" with "version: two").
func TestPrecedencePerMatch(t *testing.T) {
	tab := mustCompile(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {value: /}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /x}}, {headers: [{name: v, value: "2"}]}]
    backendRefs: [{name: v2, port: 80}]
`)
	rs := tab.Lookup("default", "svc", 80)
	for _, tt := range []struct {
		r    *Request
		want string
	}{
		{req("GET", "/", "", "V: 2"), "v2"},
		{req("GET", "/", ""), "v1"},
		{req("GET", "/x/y", ""), "v2"},
	} {
		if got := backendOf(t, rs, tt.r); got != tt.want {
			t.Errorf("%s %v -> %s, want %s", tt.r.Path, tt.r.Header, got, tt.want)
		}
	}
}

func TestLookupNoRoute(t *testing.T) {
	tab := mustCompile(t, "")
	rs := tab.Lookup("default", "svc", 80)
	if rs != nil {
		t.Fatalf("Lookup with no routes = %v", rs)
	}
	if _, ok := rs.Match(req("GET", "/", "")); ok {
		t.Fatal("nil Routes matched")
	}
	var nilTable *Table
	if nilTable.Lookup("a", "b", 1) != nil {
		t.Fatal("nil Table returned routes")
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	tab := benchTable(t, 50)
	rs := tab.Lookup("default", "svc", 80)
	r := req("GET", "/svc49/items/7", "page=2&sort=asc", "X-Tenant: t49")
	if n := testing.AllocsPerRun(200, func() {
		if _, ok := rs.Match(r); !ok {
			panic("no match")
		}
	}); n != 0 {
		t.Fatalf("Match allocates %v times", n)
	}
}

// benchTable builds n rules over n/5 path prefixes, each with header, query
// and method variants, plus a catch-all.
func benchTable(tb testing.TB, n int) *Table {
	text := `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc, port: 80}]
  rules:
`
	for i := range n - 1 {
		switch i % 3 {
		case 0:
			text += fmt.Sprintf("  - matches: [{path: {value: /svc%d}, headers: [{name: x-tenant, value: t%d}], queryParams: [{name: page, value: \"2\"}]}]\n", i, i)
		case 1:
			text += fmt.Sprintf("  - matches: [{path: {type: Exact, value: /svc%d/items}, method: POST}]\n", i)
		default:
			text += fmt.Sprintf("  - matches: [{path: {value: /svc%d}, headers: [{type: RegularExpression, name: x-tenant, value: \"t[0-9]+\"}]}]\n", i)
		}
		text += "    backendRefs: [{name: v1, port: 80, weight: 9}, {name: v2, port: 80, weight: 1}]\n"
	}
	text += "  - backendRefs: [{name: v3, port: 80}]\n"
	// 16 rules per route: split into several routes.
	return compileSplit(tb, text)
}

// compileSplit compiles a one-route text whose rules exceed the per-route
// limit by spreading them over routes of 16 rules.
func compileSplit(tb testing.TB, text string) *Table {
	tb.Helper()
	one := decodeRoutes(tb, text)[0]
	var all []*gatewayv1.HTTPRoute
	for i := 0; i < len(one.Spec.Rules); i += maxRules {
		c := one.DeepCopy()
		c.Name = fmt.Sprintf("bench-%02d", i/maxRules)
		c.Spec.Rules = one.Spec.Rules[i:min(i+maxRules, len(one.Spec.Rules))]
		all = append(all, c)
	}
	tab, sts := Compile(all, nil, testServices, nil)
	requireAccepted(tb, sts)
	return tab
}
