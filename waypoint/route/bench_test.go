package route

import (
	"net/http"
	"testing"
)

// BenchmarkMatch50 matches on a table of 50 rules (prefix with header and
// query, exact with method, prefix with a header regex, and a catch-all).
func BenchmarkMatch50(b *testing.B) {
	rs := benchTable(b, 50).Lookup("default", "svc", 80)
	cases := map[string]*Request{
		"first":     req("GET", "/svc0/items", "page=2", "X-Tenant: t0"),
		"last":      req("GET", "/svc47/x", "", "X-Tenant: t9"),
		"catch-all": req("GET", "/nothing/here", "a=1&b=2"),
	}
	for name, r := range cases {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := rs.Match(r); !ok {
					b.Fatal("no match")
				}
			}
		})
	}
}

func BenchmarkApplyRequest(b *testing.B) {
	rs := mustCompile(b, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: api}], remove: [x-debug]}
    backendRefs: [{name: v1, port: 80, weight: 90}, {name: v2, port: 80, weight: 10}]
`).Lookup("default", "svc", 80)
	h := http.Header{"X-Debug": {"1"}, "Accept": {"*/*"}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r := Request{Method: "GET", Host: "svc", Port: 80, Path: "/api/users", Header: h}
		rule, _ := rs.Match(&r)
		rule.ApplyRequest(&r)
		if _, ok := rule.Pick(uint64(i)); !ok {
			b.Fatal("no backend")
		}
	}
}

func BenchmarkNormalizePath(b *testing.B) {
	for name, p := range map[string]string{"clean": "/api/v1/users/42", "dirty": "/api//v1/./users/%34%32/../42"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NormalizePath(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzMatch feeds arbitrary paths, methods, headers and queries through
// NormalizePath, Match and the filters of a table using every feature; nothing
// may panic, and a rewritten path stays normalized.
func FuzzMatch(f *testing.F) {
	tab, _ := Compile(decodeRoutes(f, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /p}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: h.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /q}}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /r/}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
  - matches: [{path: {type: RegularExpression, value: "/re/.*[0-9]"}, headers: [{type: RegularExpression, name: x, value: "a+"}], queryParams: [{name: k, value: v}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: "1"}], add: [{name: y, value: "2"}], remove: [z]}}]
    backendRefs: [{name: v1, port: 80, weight: 3}, {name: missing, port: 80}]
  - matches: [{path: {type: Exact, value: /e}, method: POST}]
    backendRefs: [{name: v2, port: 80, weight: 0}]
`), nil, testServices, nil)
	rs := tab.Lookup("default", "svc", 80)
	if rs == nil {
		f.Fatal("the fuzzed route did not attach")
	}
	f.Add("GET", "/p/x", "k=v", "x", "aaa", uint64(1))
	f.Add("POST", "/e", "", "", "", uint64(0))
	f.Add("GET", "/r/a/../b", "a=%zz&k", "Host", "svc", uint64(7))
	f.Add("GET", "/re//1", "k=v&k=%76", "X", "a", uint64(9))
	f.Fuzz(func(t *testing.T, method, rawPath, query, hname, hvalue string, rnd uint64) {
		p, err := NormalizePath(rawPath)
		if err != nil {
			return
		}
		r := &Request{Method: method, Host: hvalue, Port: 80, Path: p, RawQuery: query, Header: http.Header{http.CanonicalHeaderKey(hname): {hvalue}}}
		rule, ok := rs.Match(r)
		if !ok {
			return
		}
		if red := rule.ApplyRequest(r); red != nil {
			if red.Location == "" || red.StatusCode < 300 {
				t.Fatalf("redirect %+v", red)
			}
			return
		}
		if n, err := NormalizePath(r.Path); err != nil || n != r.Path {
			t.Fatalf("rewritten path %q is not normalized (%q, %v)", r.Path, n, err)
		}
		if b, ok := rule.Pick(rnd); ok {
			b.ApplyRequest(r.Header)
		}
		rule.ApplyResponse(http.Header{})
	})
}
