// Package gamma holds the Gateway API mesh (GAMMA) conformance tests as Ambit runs
// them: the manifests are read from the sigs.k8s.io/gateway-api conformance module in
// the Go module cache (never copied here, and its Go packages are not imported, so its
// dependencies stay out of go.mod), and the expectations are our own table, written
// from the Test functions of conformance/tests/mesh/*.go at that version. Both the
// route-table tests (waypoint/route) and the end-to-end tests against a running
// waypoint (tests/e2e) use it.
package gamma

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Module is the conformance module the manifests come from.
const Module = "sigs.k8s.io/gateway-api/conformance@v1.6.3"

// Namespace is the namespace of the conformance manifests.
const Namespace = "gateway-conformance-mesh"

// Dir returns the conformance module's directory, downloading the module into the
// module cache when it is not there yet.
func Dir(tb testing.TB) string {
	tb.Helper()
	cache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		tb.Fatalf("go env GOMODCACHE: %v", err)
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
	// Outside this module, so go.mod and go.sum are untouched.
	cmd := exec.Command("go", "mod", "download", "-json", Module)
	cmd.Dir = tb.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	out, err := cmd.Output()
	var info struct{ Dir string }
	if err != nil || json.Unmarshal(out, &info) != nil || info.Dir == "" {
		tb.Fatalf("%s is not in the module cache and cannot be downloaded (%v): run go mod download %s", Module, err, Module)
	}
	return info.Dir
}

// Manifest returns tests/mesh/<name> of the module.
func Manifest(tb testing.TB, dir, name string) string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "tests", "mesh", name))
	if err != nil {
		tb.Fatal(err)
	}
	return string(data)
}

// Services decodes the Services of mesh/manifests.yaml (echo, echo-v1, echo-v2).
func Services(tb testing.TB, dir string) []*corev1.Service {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "mesh", "manifests.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	var out []*corev1.Service
	for _, doc := range strings.Split(string(data), "\n---") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil || meta.Kind != "Service" {
			continue
		}
		s := &corev1.Service{}
		if err := yaml.Unmarshal([]byte(doc), s); err != nil {
			tb.Fatalf("decode manifests.yaml: %v", err)
		}
		out = append(out, s)
	}
	if len(out) < 3 {
		tb.Fatalf("manifests.yaml has %d Services", len(out))
	}
	return out
}

// Case is one request of a conformance test and what the test expects of it.
type Case struct {
	Svc     string // the Service the client addresses, "echo" when empty
	Port    uint16 // its port, 80 when 0
	Target  string // path and query, "/" when empty
	Headers []string
	Method  string // GET when empty

	Backend string // the Service answering; "404" for no match
	// Redirect expectations, as the suite's CompareRoundTrip checks them: empty
	// fields default to the request's scheme and path and to any host.
	Code                       int
	Scheme, Host, RPort, RPath string
	// What the backend must receive.
	UpPath    string
	UpHeaders map[string]string
	UpAbsent  []string
	// What the client must receive.
	RespHeaders map[string]string
	RespAbsent  []string
}

// WithDefaults fills in the empty request fields.
func (c Case) WithDefaults() Case {
	if c.Svc == "" {
		c.Svc = "echo"
	}
	if c.Port == 0 {
		c.Port = 80
	}
	if c.Target == "" {
		c.Target = "/"
	}
	if c.Method == "" {
		c.Method = "GET"
	}
	return c
}

// String names the request.
func (c Case) String() string {
	c = c.WithDefaults()
	return fmt.Sprintf("%s %s:%d%s %v", c.Method, c.Svc, c.Port, c.Target, c.Headers)
}

// Path is the request's path, without the query.
func (c Case) Path() string {
	p, _, _ := strings.Cut(c.WithDefaults().Target, "?")
	return p
}

// CheckRedirect checks a redirect answer against the expectations.
func (c Case) CheckRedirect(code int, location string) error {
	if code != c.Code {
		return fmt.Errorf("redirect code %d, want %d", code, c.Code)
	}
	u, err := url.Parse(location)
	if err != nil {
		return fmt.Errorf("location %q: %w", location, err)
	}
	want := c
	if want.Scheme == "" {
		want.Scheme = "http"
	}
	if want.Host == "" {
		want.Host = u.Hostname()
	}
	if want.RPath == "" {
		want.RPath = c.Path()
	}
	portOK := u.Port() == want.RPort
	if want.RPort == "" {
		portOK = u.Port() == "" || u.Scheme == "http" && u.Port() == "80" || u.Scheme == "https" && u.Port() == "443"
	}
	if u.Scheme != want.Scheme || u.Hostname() != want.Host || u.Path != want.RPath || !portOK {
		return fmt.Errorf("location %s, want %s://%s[:%s]%s", location, want.Scheme, want.Host, want.RPort, want.RPath)
	}
	return nil
}

// CheckUpstream checks what the backend received.
func (c Case) CheckUpstream(path string, h http.Header) error {
	if c.UpPath != "" && path != c.UpPath {
		return fmt.Errorf("upstream path %s, want %s", path, c.UpPath)
	}
	for k, v := range c.UpHeaders {
		if got := strings.Join(h.Values(k), ","); got != v {
			return fmt.Errorf("upstream %s = %q, want %q", k, got, v)
		}
	}
	for _, k := range c.UpAbsent {
		if h.Get(k) != "" {
			return fmt.Errorf("upstream has %s", k)
		}
	}
	return nil
}

// CheckResponse checks the response headers the client received.
func (c Case) CheckResponse(h http.Header) error {
	for k, v := range c.RespHeaders {
		if got := strings.Join(h.Values(k), ","); got != v {
			return fmt.Errorf("response %s = %q, want %q", k, got, v)
		}
	}
	for _, k := range c.RespAbsent {
		if h.Get(k) != "" {
			return fmt.Errorf("response has %s", k)
		}
	}
	return nil
}

// Test is one conformance test: its upstream ShortName, manifest and requests.
type Test struct {
	Name     string
	Manifest string // under tests/mesh of the module
	Cases    []Case
}

// Tests are the mesh conformance tests of HTTPRoute that apply to a waypoint.
func Tests() []Test {
	hdrs := map[string]string{"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2", "X-Header-Set": "set-overwrites-values"}
	in := []string{"X-Header-Remove: remove-val", "X-Header-Add-Append: append-val-1", "X-Header-Set: set-val"}
	return []Test{
		{"MeshHTTPRouteMatching", "httproute-matching.yaml", []Case{
			{Target: "/", Backend: "echo-v1"},
			{Target: "/example", Backend: "echo-v1"},
			{Target: "/", Headers: []string{"Version: one"}, Backend: "echo-v1"},
			{Target: "/v2", Backend: "echo-v2"},
			{Target: "/v2/example", Backend: "echo-v2"},
			{Target: "/", Headers: []string{"Version: two"}, Backend: "echo-v2"},
			{Target: "/v2/", Backend: "echo-v2"},
			{Target: "/v2example", Backend: "echo-v1"},
			{Target: "/foo/v2/example", Backend: "echo-v1"},
		}},
		{"MeshHTTPRouteQueryParamMatching", "httproute-query-param-matching.yaml", []Case{
			{Target: "/?animal=whale", Backend: "echo-v1"},
			{Target: "/?animal=dolphin", Backend: "echo-v2"},
			{Target: "/?animal=whale&otherparam=irrelevant", Backend: "echo-v1"},
			{Target: "/?animal=dolphin&color=yellow", Backend: "echo-v2"},
			{Target: "/?color=blue", Backend: "404"},
			{Target: "/?animal=dog", Backend: "404"},
			{Target: "/?animal=whaledolphin", Backend: "404"},
			{Target: "/", Backend: "404"},
			{Target: "/path1?animal=whale", Backend: "echo-v1"},
			{Target: "/?animal=whale", Headers: []string{"version: one"}, Backend: "echo-v2"},
			{Target: "/path3?animal=shark", Backend: "echo-v1"},
			{Target: "/path4?animal=kraken", Headers: []string{"version: three"}, Backend: "echo-v1"},
			{Target: "/?animal=shark", Backend: "404"},
			{Target: "/path4?animal=kraken", Backend: "404"},
			{Target: "/path5?animal=hydra", Backend: "echo-v1"},
		}},
		{"MeshHTTPRouteRedirectHostAndStatus", "httproute-redirect-host-and-status.yaml", []Case{
			{Target: "/hostname-redirect", Code: 302, Host: "example.org"},
			{Target: "/host-and-status", Code: 301, Host: "example.org"},
		}},
		{"MeshHTTPRouteSchemeRedirect", "httproute-redirect-scheme.yaml", []Case{
			{Target: "/scheme", Code: 302, Scheme: "https"},
			{Target: "/scheme-and-host", Code: 302, Host: "example.org", Scheme: "https"},
			{Target: "/scheme-and-status", Code: 301, Scheme: "https"},
			{Target: "/scheme-and-host-and-status", Code: 302, Scheme: "https", Host: "example.org"},
		}},
		{"MeshHTTPRouteRedirectPort", "httproute-redirect-port.yaml", []Case{
			{Target: "/port", Code: 302, RPort: "8083"},
			{Target: "/port-and-host", Code: 302, Host: "example.org", RPort: "8083"},
			{Target: "/port-and-status", Code: 301, RPort: "8083"},
			{Target: "/port-and-host-and-status", Code: 302, RPort: "8083", Host: "example.org"},
		}},
		{"MeshHTTPRouteRedirectPath", "httproute-redirect-path.yaml", []Case{
			{Target: "/original-prefix/lemon", Code: 302, RPath: "/replacement-prefix/lemon"},
			{Target: "/full/path/original", Code: 302, RPath: "/full-path-replacement"},
			{Target: "/path-and-host", Code: 302, Host: "example.org", RPath: "/replacement-prefix"},
			{Target: "/path-and-status", Code: 301, RPath: "/replacement-prefix"},
			{Target: "/full-path-and-host", Code: 302, Host: "example.org", RPath: "/replacement-full"},
			{Target: "/full-path-and-status", Code: 301, RPath: "/replacement-full"},
		}},
		{"MeshHTTPRoute303Redirect", "httproute-303-redirect.yaml", []Case{{Target: "/redirect", Code: 303, RPath: "/redirect"}}},
		{"MeshHTTPRoute307Redirect", "httproute-307-redirect.yaml", []Case{{Target: "/temporary", Code: 307, RPath: "/temporary"}}},
		{"MeshHTTPRoute308Redirect", "httproute-308-redirect.yaml", []Case{{Target: "/permanent", Code: 308, RPath: "/permanent"}}},
		{"MeshHTTPRouteRewritePath", "httproute-rewrite-path.yaml", []Case{
			{Target: "/prefix/one/two", Backend: "echo-v1", UpPath: "/one/two"},
			{Target: "/strip-prefix/three", Backend: "echo-v1", UpPath: "/three"},
			{Target: "/strip-prefix", Backend: "echo-v1", UpPath: "/"},
			{Target: "/full/one/two", Backend: "echo-v1", UpPath: "/one"},
			{Target: "/full/rewrite-path-and-modify-headers/test", Headers: in, Backend: "echo-v1", UpPath: "/test", UpHeaders: hdrs, UpAbsent: []string{"X-Header-Remove"}},
			{Target: "/prefix/rewrite-path-and-modify-headers/one", Headers: in, Backend: "echo-v1", UpPath: "/prefix/one", UpHeaders: hdrs, UpAbsent: []string{"X-Header-Remove"}},
		}},
		{"MeshHTTPRouteRequestHeaderModifier", "httproute-request-header-modifier.yaml", []Case{
			{Target: "/set", Headers: []string{"Some-Other-Header: val"}, Backend: "echo-v1", UpPath: "/set", UpHeaders: map[string]string{"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}},
			{Target: "/set", Headers: []string{"Some-Other-Header: val", "X-Header-Set: some-other-value"}, Backend: "echo-v1", UpHeaders: map[string]string{"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}},
			{Target: "/add", Headers: []string{"Some-Other-Header: val"}, Backend: "echo-v1", UpHeaders: map[string]string{"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}},
			{Target: "/add", Headers: []string{"Some-Other-Header: val", "X-Header-Add: some-other-value"}, Backend: "echo-v1", UpHeaders: map[string]string{"X-Header-Add": "some-other-value,add-appends-values"}},
			{Target: "/remove", Headers: []string{"X-Header-Remove: val"}, Backend: "echo-v1", UpAbsent: []string{"X-Header-Remove"}},
			{Target: "/multiple", Headers: []string{"X-Header-Set-2: set-val-2", "X-Header-Add-2: add-val-2", "X-Header-Remove-2: remove-val-2", "Another-Header: another-header-val"}, Backend: "echo-v1",
				UpHeaders: map[string]string{"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2", "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2", "X-Header-Add-3": "header-add-3", "Another-Header": "another-header-val"},
				UpAbsent:  []string{"X-Header-Remove-1", "X-Header-Remove-2"}},
			{Target: "/case-insensitivity", Headers: []string{"x-header-set: original-val-set", "x-header-add: original-val-add", "x-header-remove: original-val-remove", "Another-Header: another-header-val"}, Backend: "echo-v1",
				UpHeaders: map[string]string{"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add", "Another-Header": "another-header-val"},
				UpAbsent:  []string{"x-header-remove", "X-Header-Remove"}},
		}},
		{"MeshTrafficSplit", "mesh-split.yaml", []Case{
			{Target: "/v1", Method: "GET", Backend: "echo-v1"},
			{Target: "/v2", Method: "GET", Backend: "echo-v2"},
		}},
		{"MeshPorts", "mesh-ports.yaml", []Case{
			{Svc: "echo-v1", Backend: "echo-v1", RespHeaders: map[string]string{"X-Header-Set": "v1"}},
			{Svc: "echo-v1", Port: 8080, Backend: "echo-v1", RespAbsent: []string{"X-Header-Set"}},
			{Svc: "echo-v2", Backend: "echo-v2", RespHeaders: map[string]string{"X-Header-Set": "v2"}},
			{Svc: "echo-v2", Port: 8080, Backend: "echo-v2", RespHeaders: map[string]string{"X-Header-Set": "v2"}},
		}},
		{"MeshHTTPRouteNamedRule", "httproute-named-rule.yaml", []Case{
			{Target: "/named", Backend: "echo-v1", UpPath: "/named"},
			{Target: "/unnamed", Backend: "echo-v2"},
		}},
	}
}
