package route

import (
	"encoding/json"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The mesh conformance manifests are read from the Gateway API conformance
// module in the module cache, never copied here nor imported (its dependencies
// stay out of go.mod). The expectations below are our own table, written from
// the Test functions of conformance/tests/mesh/*.go at that version.
const conformanceModule = "sigs.k8s.io/gateway-api/conformance@v1.6.3"

func conformanceDir(tb testing.TB) string {
	tb.Helper()
	cache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		tb.Skipf("go env GOMODCACHE: %v", err)
	}
	root := strings.TrimSpace(string(cache))
	for _, d := range []string{
		filepath.Join(root, "sigs.k8s.io", "gateway-api", "conformance@v1.6.3"),
		filepath.Join(root, "sigs.k8s.io", "gateway-api@v1.6.3", "conformance"),
	} {
		if _, err := os.Stat(filepath.Join(d, "mesh", "manifests.yaml")); err == nil {
			return d
		}
	}
	// Not in the cache yet: download it (outside this module, so go.mod and
	// go.sum are untouched).
	cmd := exec.Command("go", "mod", "download", "-json", conformanceModule)
	cmd.Dir = tb.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	out, err := cmd.Output()
	var info struct{ Dir string }
	if err != nil || json.Unmarshal(out, &info) != nil || info.Dir == "" {
		tb.Skipf("%s is not in the module cache and cannot be downloaded (%v): run go mod download %s", conformanceModule, err, conformanceModule)
	}
	return info.Dir
}

// conformanceServices decodes the Services of conformance/mesh/manifests.yaml.
func conformanceServices(tb testing.TB, dir string) Services {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "mesh", "manifests.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	svcs := map[string]ServiceInfo{}
	for _, doc := range strings.Split(string(data), "\n---") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil || meta.Kind != "Service" {
			continue
		}
		var s corev1.Service
		if err := yaml.Unmarshal([]byte(doc), &s); err != nil {
			tb.Fatalf("decode manifests.yaml: %v", err)
		}
		info := ServiceInfo{Namespace: s.Namespace, Name: s.Name}
		for _, p := range s.Spec.Ports {
			info.Ports = append(info.Ports, ServicePort{Name: p.Name, Port: uint16(p.Port)})
		}
		svcs[s.Namespace+"/"+s.Name] = info
	}
	if len(svcs) < 3 {
		tb.Fatalf("manifests.yaml has %d Services", len(svcs))
	}
	return func(ns, name string) (ServiceInfo, bool) {
		s, ok := svcs[ns+"/"+name]
		return s, ok
	}
}

// meshCase is one request of a conformance test and what the test expects.
type meshCase struct {
	svc     string // Service the client addresses, "echo" when empty
	port    uint16 // its port, 80 when 0
	target  string // path and query
	headers []string
	method  string

	backend string // the Service answering; "404" for no match
	// redirect expectations, as CompareRoundTrip checks them: empty fields
	// default to the request's scheme and path and to any host.
	code                       int
	scheme, host, rPort, rPath string
	// upstream request expectations
	upPath    string
	upHeaders map[string]string
	upAbsent  []string
	// response header expectations
	respHeaders map[string]string
	respAbsent  []string
}

func TestMeshConformance(t *testing.T) {
	dir := conformanceDir(t)
	svcs := conformanceServices(t, dir)
	hdrs := map[string]string{"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2", "X-Header-Set": "set-overwrites-values"}
	in := []string{"X-Header-Remove: remove-val", "X-Header-Add-Append: append-val-1", "X-Header-Set: set-val"}
	tests := []struct {
		name     string // upstream ShortName
		manifest string
		cases    []meshCase
	}{
		{"MeshHTTPRouteMatching", "httproute-matching.yaml", []meshCase{
			{target: "/", backend: "echo-v1"},
			{target: "/example", backend: "echo-v1"},
			{target: "/", headers: []string{"Version: one"}, backend: "echo-v1"},
			{target: "/v2", backend: "echo-v2"},
			{target: "/v2/example", backend: "echo-v2"},
			{target: "/", headers: []string{"Version: two"}, backend: "echo-v2"},
			{target: "/v2/", backend: "echo-v2"},
			{target: "/v2example", backend: "echo-v1"},
			{target: "/foo/v2/example", backend: "echo-v1"},
		}},
		{"MeshHTTPRouteQueryParamMatching", "httproute-query-param-matching.yaml", []meshCase{
			{target: "/?animal=whale", backend: "echo-v1"},
			{target: "/?animal=dolphin", backend: "echo-v2"},
			{target: "/?animal=whale&otherparam=irrelevant", backend: "echo-v1"},
			{target: "/?animal=dolphin&color=yellow", backend: "echo-v2"},
			{target: "/?color=blue", backend: "404"},
			{target: "/?animal=dog", backend: "404"},
			{target: "/?animal=whaledolphin", backend: "404"},
			{target: "/", backend: "404"},
			{target: "/path1?animal=whale", backend: "echo-v1"},
			{target: "/?animal=whale", headers: []string{"version: one"}, backend: "echo-v2"},
			{target: "/path3?animal=shark", backend: "echo-v1"},
			{target: "/path4?animal=kraken", headers: []string{"version: three"}, backend: "echo-v1"},
			{target: "/?animal=shark", backend: "404"},
			{target: "/path4?animal=kraken", backend: "404"},
			{target: "/path5?animal=hydra", backend: "echo-v1"},
		}},
		{"MeshHTTPRouteRedirectHostAndStatus", "httproute-redirect-host-and-status.yaml", []meshCase{
			{target: "/hostname-redirect", code: 302, host: "example.org"},
			{target: "/host-and-status", code: 301, host: "example.org"},
		}},
		{"MeshHTTPRouteSchemeRedirect", "httproute-redirect-scheme.yaml", []meshCase{
			{target: "/scheme", code: 302, scheme: "https"},
			{target: "/scheme-and-host", code: 302, host: "example.org", scheme: "https"},
			{target: "/scheme-and-status", code: 301, scheme: "https"},
			{target: "/scheme-and-host-and-status", code: 302, scheme: "https", host: "example.org"},
		}},
		{"MeshHTTPRouteRedirectPort", "httproute-redirect-port.yaml", []meshCase{
			{target: "/port", code: 302, rPort: "8083"},
			{target: "/port-and-host", code: 302, host: "example.org", rPort: "8083"},
			{target: "/port-and-status", code: 301, rPort: "8083"},
			{target: "/port-and-host-and-status", code: 302, rPort: "8083", host: "example.org"},
		}},
		{"MeshHTTPRouteRedirectPath", "httproute-redirect-path.yaml", []meshCase{
			{target: "/original-prefix/lemon", code: 302, rPath: "/replacement-prefix/lemon"},
			{target: "/full/path/original", code: 302, rPath: "/full-path-replacement"},
			{target: "/path-and-host", code: 302, host: "example.org", rPath: "/replacement-prefix"},
			{target: "/path-and-status", code: 301, rPath: "/replacement-prefix"},
			{target: "/full-path-and-host", code: 302, host: "example.org", rPath: "/replacement-full"},
			{target: "/full-path-and-status", code: 301, rPath: "/replacement-full"},
		}},
		{"MeshHTTPRoute303Redirect", "httproute-303-redirect.yaml", []meshCase{{target: "/redirect", code: 303, rPath: "/redirect"}}},
		{"MeshHTTPRoute307Redirect", "httproute-307-redirect.yaml", []meshCase{{target: "/temporary", code: 307, rPath: "/temporary"}}},
		{"MeshHTTPRoute308Redirect", "httproute-308-redirect.yaml", []meshCase{{target: "/permanent", code: 308, rPath: "/permanent"}}},
		{"MeshHTTPRouteRewritePath", "httproute-rewrite-path.yaml", []meshCase{
			{target: "/prefix/one/two", backend: "echo-v1", upPath: "/one/two"},
			{target: "/strip-prefix/three", backend: "echo-v1", upPath: "/three"},
			{target: "/strip-prefix", backend: "echo-v1", upPath: "/"},
			{target: "/full/one/two", backend: "echo-v1", upPath: "/one"},
			{target: "/full/rewrite-path-and-modify-headers/test", headers: in, backend: "echo-v1", upPath: "/test", upHeaders: hdrs, upAbsent: []string{"X-Header-Remove"}},
			{target: "/prefix/rewrite-path-and-modify-headers/one", headers: in, backend: "echo-v1", upPath: "/prefix/one", upHeaders: hdrs, upAbsent: []string{"X-Header-Remove"}},
		}},
		{"MeshHTTPRouteRequestHeaderModifier", "httproute-request-header-modifier.yaml", []meshCase{
			{target: "/set", headers: []string{"Some-Other-Header: val"}, backend: "echo-v1", upPath: "/set", upHeaders: map[string]string{"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}},
			{target: "/set", headers: []string{"Some-Other-Header: val", "X-Header-Set: some-other-value"}, backend: "echo-v1", upHeaders: map[string]string{"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}},
			{target: "/add", headers: []string{"Some-Other-Header: val"}, backend: "echo-v1", upHeaders: map[string]string{"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}},
			{target: "/add", headers: []string{"Some-Other-Header: val", "X-Header-Add: some-other-value"}, backend: "echo-v1", upHeaders: map[string]string{"X-Header-Add": "some-other-value,add-appends-values"}},
			{target: "/remove", headers: []string{"X-Header-Remove: val"}, backend: "echo-v1", upAbsent: []string{"X-Header-Remove"}},
			{target: "/multiple", headers: []string{"X-Header-Set-2: set-val-2", "X-Header-Add-2: add-val-2", "X-Header-Remove-2: remove-val-2", "Another-Header: another-header-val"}, backend: "echo-v1",
				upHeaders: map[string]string{"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2", "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2", "X-Header-Add-3": "header-add-3", "Another-Header": "another-header-val"},
				upAbsent:  []string{"X-Header-Remove-1", "X-Header-Remove-2"}},
			{target: "/case-insensitivity", headers: []string{"x-header-set: original-val-set", "x-header-add: original-val-add", "x-header-remove: original-val-remove", "Another-Header: another-header-val"}, backend: "echo-v1",
				upHeaders: map[string]string{"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add", "Another-Header": "another-header-val"},
				upAbsent:  []string{"x-header-remove", "X-Header-Remove"}},
		}},
		{"MeshTrafficSplit", "mesh-split.yaml", []meshCase{
			{target: "/v1", method: "GET", backend: "echo-v1"},
			{target: "/v2", method: "GET", backend: "echo-v2"},
		}},
		{"MeshPorts", "mesh-ports.yaml", []meshCase{
			{svc: "echo-v1", backend: "echo-v1", respHeaders: map[string]string{"X-Header-Set": "v1"}},
			{svc: "echo-v1", port: 8080, backend: "echo-v1", respAbsent: []string{"X-Header-Set"}},
			{svc: "echo-v2", backend: "echo-v2", respHeaders: map[string]string{"X-Header-Set": "v2"}},
			{svc: "echo-v2", port: 8080, backend: "echo-v2", respHeaders: map[string]string{"X-Header-Set": "v2"}},
		}},
		{"MeshHTTPRouteNamedRule", "httproute-named-rule.yaml", []meshCase{
			{target: "/named", backend: "echo-v1", upPath: "/named"},
			{target: "/unnamed", backend: "echo-v2"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, "tests", "mesh", tt.manifest))
			if err != nil {
				t.Fatal(err)
			}
			tab, sts := Compile(decodeRoutes(t, string(data)), nil, svcs, nil)
			requireAccepted(t, sts)
			for i, c := range tt.cases {
				checkMeshCase(t, tab, i, c)
			}
		})
	}
}

func checkMeshCase(t *testing.T, tab *Table, i int, c meshCase) {
	t.Helper()
	if c.svc == "" {
		c.svc = "echo"
	}
	if c.port == 0 {
		c.port = 80
	}
	if c.target == "" {
		c.target = "/"
	}
	if c.method == "" {
		c.method = "GET"
	}
	p, q, _ := strings.Cut(c.target, "?")
	r := req(c.method, p, q, c.headers...)
	r.Host, r.Port = c.svc, c.port
	rs := tab.Lookup("gateway-conformance-mesh", c.svc, c.port)
	if rs == nil {
		// No route on this port: the waypoint forwards to the Service itself.
		if c.backend != c.svc || len(c.respHeaders) > 0 || c.code != 0 {
			t.Errorf("case %d %s:%d%s: no route attached", i, c.svc, c.port, c.target)
		}
		return
	}
	rule, ok := rs.Match(r)
	if !ok {
		if c.backend != "404" {
			t.Errorf("case %d %s: no match, want %s", i, c.target, c.backend)
		}
		return
	}
	red := rule.ApplyRequest(r)
	if c.code != 0 {
		if red == nil || red.StatusCode != c.code {
			t.Errorf("case %d %s: redirect %+v, want code %d", i, c.target, red, c.code)
			return
		}
		u, err := url.Parse(red.Location)
		if err != nil {
			t.Errorf("case %d %s: Location %q: %v", i, c.target, red.Location, err)
			return
		}
		want := c
		if want.scheme == "" {
			want.scheme = "http"
		}
		if want.host == "" {
			want.host = u.Hostname()
		}
		if want.rPath == "" {
			want.rPath = p
		}
		portOK := u.Port() == want.rPort
		if want.rPort == "" {
			portOK = u.Port() == "" || u.Scheme == "http" && u.Port() == "80" || u.Scheme == "https" && u.Port() == "443"
		}
		if u.Scheme != want.scheme || u.Hostname() != want.host || u.Path != want.rPath || !portOK {
			t.Errorf("case %d %s: Location %s, want %s://%s[:%s]%s", i, c.target, red.Location, want.scheme, want.host, want.rPort, want.rPath)
		}
		return
	}
	if red != nil {
		t.Errorf("case %d %s: unexpected redirect %+v", i, c.target, red)
		return
	}
	if c.backend == "404" {
		t.Errorf("case %d %s: matched %s rule %d, want 404", i, c.target, rule.Route, rule.Index)
		return
	}
	b, ok := rule.Pick(rand.Uint64())
	if !ok || b.Invalid != nil || b.Name != c.backend {
		t.Errorf("case %d %s: backend %+v, want %s", i, c.target, b, c.backend)
		return
	}
	b.ApplyRequest(r.Header)
	if c.upPath != "" && r.Path != c.upPath {
		t.Errorf("case %d %s: upstream path %s, want %s", i, c.target, r.Path, c.upPath)
	}
	for k, v := range c.upHeaders {
		if got := strings.Join(r.Header.Values(k), ","); got != v {
			t.Errorf("case %d %s: upstream %s = %q, want %q", i, c.target, k, got, v)
		}
	}
	for _, k := range c.upAbsent {
		if _, ok := r.Header[k]; ok || r.Header.Get(k) != "" {
			t.Errorf("case %d %s: upstream has %s", i, c.target, k)
		}
	}
	resp := map[string][]string{}
	b.ApplyResponse(resp)
	rule.ApplyResponse(resp)
	for k, v := range c.respHeaders {
		if got := strings.Join(resp[k], ","); got != v {
			t.Errorf("case %d: response %s = %q, want %q", i, k, got, v)
		}
	}
	for _, k := range c.respAbsent {
		if _, ok := resp[k]; ok {
			t.Errorf("case %d: response has %s", i, k)
		}
	}
}

// TestMeshConformanceWeight is MeshHTTPRouteWeight (70/30 on echo-v1/echo-v2,
// upstream tolerance 5 points over 500 requests), on 10,000 random values.
func TestMeshConformanceWeight(t *testing.T) {
	dir := conformanceDir(t)
	data, err := os.ReadFile(filepath.Join(dir, "tests", "mesh", "httproute-weight.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tab, _ := Compile(decodeRoutes(t, string(data)), nil, conformanceServices(t, dir), nil)
	rule, ok := tab.Lookup("gateway-conformance-mesh", "echo", 80).Match(req("GET", "/", ""))
	if !ok {
		t.Fatal("no match")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	got := map[string]int{}
	for range 10000 {
		b, _ := rule.Pick(rng.Uint64())
		got[b.Name]++
	}
	v1 := float64(got["echo-v1"]) / 10000
	if v1 < 0.65 || v1 > 0.75 || got["echo-v1"]+got["echo-v2"] != 10000 {
		t.Errorf("distribution %v, want 70/30", got)
	}
	if !reflect.DeepEqual(rule.Timeouts, Timeouts{}) {
		t.Errorf("timeouts %+v", rule.Timeouts)
	}
}
