package route

import (
	"math"
	"math/rand/v2"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestReplacePrefix(t *testing.T) {
	// The table of HTTPPathModifier.ReplacePrefixMatch, plus a "/" prefix.
	tests := []struct{ path, prefix, repl, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		{"/bar", "/", "/xyz", "/xyz/bar"},
		{"/", "/", "/xyz", "/xyz/"},
	}
	for _, tt := range tests {
		text := `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {type: PathPrefix, value: "` + tt.prefix + `"}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: "` + tt.repl + `"}}}]
    backendRefs: [{name: v1, port: 80}]
`
		rs := mustCompile(t, text).Lookup("default", "svc", 80)
		r := req("GET", tt.path, "")
		rule, ok := rs.Match(r)
		if !ok {
			t.Fatalf("%s did not match prefix %s", tt.path, tt.prefix)
		}
		if red := rule.ApplyRequest(r); red != nil || r.Path != tt.want {
			t.Errorf("%s prefix %q repl %q -> %q (redirect %v), want %q", tt.path, tt.prefix, tt.repl, r.Path, red, tt.want)
		}
	}
}

func TestFilters(t *testing.T) {
	tab := mustCompile(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {value: /hdr}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: s}]
        add: [{name: X-Add, value: a}]
        remove: [x-remove, X-Set-Removed]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: r}]
        remove: [server]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: backend.example, path: {type: ReplaceFullPath, replaceFullPath: /new}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-after, value: "1"}]}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /order}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-a, value: "1"}]}
    - type: RequestRedirect
      requestRedirect: {hostname: example.org}
  - matches: [{path: {value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: v2, port: 80}, percent: 25}
    - type: RequestMirror
      requestMirror: {backendRef: {name: v3, port: 80}, fraction: {numerator: 1, denominator: 3}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: v1, port: 80}}
    backendRefs:
    - name: v1
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-backend, value: v1}]}
      - type: ResponseHeaderModifier
        responseHeaderModifier: {add: [{name: x-from, value: v1}]}
`)
	rs := tab.Lookup("default", "svc", 80)

	r := req("GET", "/hdr", "", "X-Set: old", "x-set: older", "X-Add: first", "X-Remove: gone", "X-Set-Removed: gone", "Other: kept")
	rule, _ := rs.Match(r)
	if red := rule.ApplyRequest(r); red != nil {
		t.Fatalf("unexpected redirect %+v", red)
	}
	want := http.Header{"X-Set": {"s"}, "X-Add": {"first", "a"}, "Other": {"kept"}}
	if !reflect.DeepEqual(r.Header, want) {
		t.Errorf("request headers = %v, want %v", r.Header, want)
	}
	resp := http.Header{"Server": {"echo"}, "X-Resp": {"x"}}
	rule.ApplyResponse(resp)
	if !reflect.DeepEqual(resp, http.Header{"X-Resp": {"r"}}) {
		t.Errorf("response headers = %v", resp)
	}

	r = req("GET", "/rewrite/a", "k=v")
	rule, _ = rs.Match(r)
	rule.ApplyRequest(r)
	if r.Host != "backend.example" || r.Path != "/new" || r.RawQuery != "k=v" || r.Header.Get("X-After") != "1" {
		t.Errorf("rewrite: host %q path %q query %q headers %v", r.Host, r.Path, r.RawQuery, r.Header)
	}

	r = req("GET", "/order", "")
	rule, _ = rs.Match(r)
	red := rule.ApplyRequest(r)
	if red == nil || red.Location != "http://example.org/order" || red.StatusCode != 302 || r.Header.Get("X-A") != "1" {
		t.Errorf("filters before a redirect: %+v %v", red, r.Header)
	}
	if _, ok := rule.Pick(0); ok {
		t.Error("a redirect rule has a backend")
	}

	rule, _ = rs.Match(req("GET", "/mirror", ""))
	if len(rule.Mirrors) != 3 {
		t.Fatalf("mirrors = %+v", rule.Mirrors)
	}
	for i, want := range []float64{0.25, 1.0 / 3, 1} {
		m := &rule.Mirrors[i]
		n := 0
		for v := range uint64(3000) {
			if m.Sample(v) {
				n++
			}
		}
		if got := float64(n) / 3000; math.Abs(got-want) > 0.01 || m.Backend.Invalid != nil {
			t.Errorf("mirror %d to %s: sampled %.3f, want %.3f (%v)", i, m.Backend.Name, got, want, m.Backend.Invalid)
		}
	}
	b, _ := rule.Pick(0)
	h := http.Header{}
	b.ApplyRequest(h)
	resp = http.Header{}
	b.ApplyResponse(resp)
	if h.Get("X-Backend") != "v1" || resp.Get("X-From") != "v1" {
		t.Errorf("backend filters: request %v response %v", h, resp)
	}
}

func TestRedirect(t *testing.T) {
	tab := mustCompile(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {value: /keep}}]
    filters: [{type: RequestRedirect, requestRedirect: {}}]
  - matches: [{path: {value: /https}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {value: /http}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: http}}]
  - matches: [{path: {value: /https-port}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443}}]
  - matches: [{path: {value: /port443}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 443}}]
  - matches: [{path: {value: /codes}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308, hostname: a.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {value: /full}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303, path: {type: ReplaceFullPath, replaceFullPath: /f}}}]
  - matches: [{path: {value: /c301}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]
  - matches: [{path: {value: /c307}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]
`)
	tests := []struct {
		path, host, scheme string
		port               uint16
		want               string
		code               int
	}{
		{"/keep", "svc", "http", 80, "http://svc/keep?q=1", 302},
		{"/keep", "svc:8080", "http", 8080, "http://svc:8080/keep?q=1", 302},       // the listener (Service) port stays
		{"/keep", "svc", "https", 443, "https://svc/keep?q=1", 302},                // https on 443: no port
		{"/keep", "[fd00::1]:80", "http", 80, "http://[fd00::1]/keep?q=1", 302},    // IPv6 authority
		{"/https", "svc:8080", "http", 8080, "https://svc/https?q=1", 302},         // scheme change: its well-known port
		{"/http", "svc", "https", 8443, "http://svc/http?q=1", 302},                //
		{"/https-port", "svc", "http", 80, "https://svc:8443/https-port?q=1", 302}, //
		{"/port443", "svc", "http", 80, "http://svc:443/port443?q=1", 302},         // http on 443 keeps the port
		{"/codes/x/y", "svc", "http", 80, "http://a.example/new/x/y?q=1", 308},
		{"/full/x", "svc", "http", 80, "http://svc/f?q=1", 303},
		{"/c301", "svc", "http", 80, "http://svc/c301?q=1", 301},
		{"/c307", "svc", "http", 80, "http://svc/c307?q=1", 307},
	}
	rs := tab.Lookup("default", "svc", 80)
	for _, tt := range tests {
		r := req("GET", tt.path, "q=1")
		r.Host, r.Scheme, r.Port = tt.host, tt.scheme, tt.port
		rule, ok := rs.Match(r)
		if !ok {
			t.Fatalf("%s: no match", tt.path)
		}
		red := rule.ApplyRequest(r)
		if red == nil || red.Location != tt.want || red.StatusCode != tt.code {
			t.Errorf("%s %s://%s (port %d): %+v, want %d %s", tt.path, tt.scheme, tt.host, tt.port, red, tt.code, tt.want)
		}
	}
}

func TestWeights(t *testing.T) {
	tab := mustCompile(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {value: /split}}]
    backendRefs: [{name: v1, port: 80, weight: 90}, {name: v2, port: 80, weight: 10}]
  - matches: [{path: {value: /default}}]
    backendRefs: [{name: v1, port: 80}, {name: v2, port: 80}, {name: v3, port: 80, weight: 0}]
  - matches: [{path: {value: /zero}}]
    backendRefs: [{name: v1, port: 80, weight: 0}]
  - matches: [{path: {value: /none}}]
`)
	rs := tab.Lookup("default", "svc", 80)
	count := func(path string, rnd func(i int) uint64, n int) map[string]int {
		rule, ok := rs.Match(req("GET", path, ""))
		if !ok {
			t.Fatalf("%s: no match", path)
		}
		got := map[string]int{}
		for i := range n {
			b, ok := rule.Pick(rnd(i))
			if !ok {
				got["500"]++
				continue
			}
			got[b.Name]++
		}
		return got
	}
	// Deterministic: consecutive values split exactly.
	if got := count("/split", func(i int) uint64 { return uint64(i) }, 100); got["v1"] != 90 || got["v2"] != 10 {
		t.Errorf("90/10 over 0..99: %v", got)
	}
	// 10,000 synthetic random values, within 1.5 points.
	rng := rand.New(rand.NewPCG(1, 2))
	got := count("/split", func(int) uint64 { return rng.Uint64() }, 10000)
	if v2 := float64(got["v2"]) / 10000; math.Abs(v2-0.10) > 0.015 {
		t.Errorf("90/10 over random values: %v", got)
	}
	if got := count("/default", func(i int) uint64 { return uint64(i) }, 10); got["v1"] != 5 || got["v2"] != 5 || got["v3"] != 0 {
		t.Errorf("default weight 1, weight 0 never picked: %v", got)
	}
	for _, p := range []string{"/zero", "/none"} {
		if got := count(p, func(i int) uint64 { return uint64(i) }, 3); got["500"] != 3 {
			t.Errorf("%s: %v, want 500s", p, got)
		}
	}
}

func TestInvalidBackendKeepsItsShare(t *testing.T) {
	text := `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - backendRefs: [{name: v1, port: 80}, {name: missing, port: 80}]
`
	tab, sts := Compile(decodeRoutes(t, text), nil, testServices, nil)
	rule, _ := tab.Lookup("default", "svc", 80).Match(req("GET", "/", ""))
	invalid := 0
	for i := range uint64(1000) {
		b, ok := rule.Pick(i)
		if !ok {
			t.Fatal("no backend")
		}
		if b.Invalid != nil {
			invalid++
		}
	}
	if invalid != 500 {
		t.Errorf("invalid share = %d/1000, want 500", invalid)
	}
	c := sts[0].Parents[0].Conditions
	if c[0].Status != "True" || c[1].Status != "False" || c[1].Reason != "BackendNotFound" {
		t.Errorf("conditions = %+v", c)
	}
}

func TestTimeoutsAndRetry(t *testing.T) {
	tab := mustCompile(t, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: svc}]
  rules:
  - matches: [{path: {value: /t}}]
    timeouts: {request: 10s, backendRequest: 1s500ms}
    retry: {attempts: 3, codes: [500, 503], backoff: 100ms}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /d}}]
    timeouts: {request: 0s, backendRequest: 1m}
    retry: {}
    backendRefs: [{name: v1, port: 80}]
  - backendRefs: [{name: v1, port: 80}]
`)
	rs := tab.Lookup("default", "svc", 80)
	rule, _ := rs.Match(req("GET", "/t", ""))
	if rule.Timeouts != (Timeouts{10 * time.Second, 1500 * time.Millisecond}) ||
		!reflect.DeepEqual(rule.Retry, &Retry{Attempts: 3, Codes: []int{500, 503}, Backoff: 100 * time.Millisecond}) {
		t.Errorf("timeouts %+v retry %+v", rule.Timeouts, rule.Retry)
	}
	rule, _ = rs.Match(req("GET", "/d", ""))
	if rule.Timeouts != (Timeouts{0, time.Minute}) || !reflect.DeepEqual(rule.Retry, &Retry{Attempts: -1}) {
		t.Errorf("timeouts %+v retry %+v", rule.Timeouts, rule.Retry)
	}
	rule, _ = rs.Match(req("GET", "/", ""))
	if rule.Timeouts != (Timeouts{}) || rule.Retry != nil {
		t.Errorf("defaults: timeouts %+v retry %+v", rule.Timeouts, rule.Retry)
	}
}
