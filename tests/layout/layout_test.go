// Package layout checks the dependency rule of docs/architecture.md: which of the
// module's packages may import which, and where the heavy libraries may be linked.
package layout

import (
	"os/exec"
	"path"
	"strings"
	"testing"
)

const module = "github.com/ambitmesh/ambit"

// mayImport lists, per package pattern, the module packages it may import directly.
// A package the table does not match may import anything but what forbidden says.
var mayImport = []struct {
	pkg   string
	allow []string
}{
	{"internal/sockio", nil},
	{"internal/workers", nil},
	{"internal/logbuf", nil},
	{"internal/flagvalue", nil},
	{"internal/serve", nil},
	{"internal/procs", nil},
	{"pcap", nil},
	{"internal/fielderr", nil},
	{"internal/yamldoc", []string{"internal/fielderr"}},
	// The model carries the compiled policies.
	{"discovery", []string{"internal/fielderr", "internal/yamldoc", "policy"}},
	{"identity", nil},
	// The tunnel protocol knows sockets and goroutines, not the mesh.
	{"hbone/...", []string{"internal/sockio", "internal/workers", "identity", "hbone/..."}},
	// Capture knows the kernel, not the tunnel.
	{"redirect", []string{"internal/sockio"}},
	// The byte pump is shared by ztunnel and the waypoint: no tunnel implementation.
	{"internal/relay/...", []string{"internal/sockio", "internal/relay/..."}},
	// The authorization evaluator is pure: Istio's types in, decisions out; it knows
	// no model, no transport.
	{"policy/...", []string{"internal/fielderr", "internal/yamldoc", "policy/..."}},
	{"identity/ca", []string{"discovery", "identity"}},
	{"identity/spire", []string{"identity"}},
	{"discovery/kube", []string{"discovery", "policy"}},
	{"discovery/kube/istiopolicy", []string{"discovery/kube", "policy"}},
	{"discovery/kube/istiotraffic", []string{"discovery", "discovery/kube"}},
}

// forbidden names, per package pattern, module packages it must not import directly.
var forbidden = []struct {
	pkg  string
	deny []string
}{
	// Only mains wire sources and commands; the node tunnel and the waypoint do not
	// link Kubernetes or SPIRE clients, nor each other.
	{"ztunnel/...", []string{"cmd/...", "internal/ctl", "discovery/kube", "identity/spire", "identity/ca/service", "identity/kubeauth", "waypoint/...", "tests/..."}},
	{"waypoint/...", []string{"cmd/...", "redirect", "ztunnel/...", "discovery/kube", "identity/spire", "tests/..."}},
}

// heavy libraries and the only packages that may link them (transitively).
var heavy = []struct {
	lib   string
	users []string
}{
	// ambitctl's waypoint command talks to the API server; the rest of internal/ctl
	// (the node commands) must not link client-go.
	{"k8s.io/client-go", []string{"cmd/...", "discovery/kube/...", "identity/kubeauth", "identity/ca/service", "install/...", "internal/ctl/waypointcmd", "tests/..."}},
	{"github.com/quic-go/quic-go", []string{"hbone/...", "cmd/...", "tests/..."}},
	// Istio's client; its API types (istio.io/client-go/pkg/apis) are the model's
	// DestinationRules.
	{"istio.io/client-go/pkg/clientset", istioClientUsers},
	{"istio.io/client-go/pkg/informers", istioClientUsers},
	{"istio.io/client-go/pkg/listers", istioClientUsers},
}

var istioClientUsers = []string{"cmd/...", "discovery/kube/istiopolicy", "discovery/kube/cluster", "tests/...", "install/..."}

// match reports whether module-relative p matches pattern (exact, or "dir/..." for dir
// and everything below it).
func match(pattern, p string) bool {
	if dir, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == dir || strings.HasPrefix(p, dir+"/")
	}
	return p == pattern
}

func matchAny(patterns []string, p string) bool {
	for _, pat := range patterns {
		if match(pat, p) {
			return true
		}
	}
	return false
}

type pkgInfo struct {
	path    string   // module-relative
	imports []string // module-relative direct imports of the module's packages
	deps    []string // all transitive dependencies, full paths
}

func listPackages(tb testing.TB) []pkgInfo {
	tb.Helper()
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \",\"}}|{{join .Deps \",\"}}", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			tb.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		tb.Fatalf("go list: %v", err)
	}
	var pkgs []pkgInfo
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 3 {
			tb.Fatalf("go list line %q: want three fields", line)
		}
		p := pkgInfo{path: rel(f[0]), deps: strings.Split(f[2], ",")}
		for _, imp := range strings.Split(f[1], ",") {
			if r := rel(imp); r != imp {
				p.imports = append(p.imports, r)
			}
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func rel(p string) string {
	if p == module {
		return "."
	}
	if r, ok := strings.CutPrefix(p, module+"/"); ok {
		return r
	}
	return p
}

func TestDependencyRule(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages: the module is not where the test expects it", len(pkgs))
	}
	for _, p := range pkgs {
		for _, rule := range mayImport {
			if !match(rule.pkg, p.path) {
				continue
			}
			for _, imp := range p.imports {
				if !matchAny(rule.allow, imp) {
					t.Errorf("%s imports %s: the rule for %s allows only %v", p.path, imp, rule.pkg, rule.allow)
				}
			}
		}
		for _, rule := range forbidden {
			if !match(rule.pkg, p.path) {
				continue
			}
			for _, imp := range p.imports {
				if matchAny(rule.deny, imp) {
					t.Errorf("%s imports %s, which %s must not", p.path, imp, rule.pkg)
				}
			}
		}
		for _, h := range heavy {
			if matchAny(h.users, p.path) {
				continue
			}
			for _, d := range p.deps {
				if d == h.lib || strings.HasPrefix(d, h.lib+"/") {
					t.Errorf("%s links %s (through its dependencies); only %v may", p.path, path.Clean(h.lib), h.users)
					break
				}
			}
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, p string
		want       bool
	}{
		{"hbone", "hbone", true},
		{"hbone", "hbone/h3", false},
		{"hbone/...", "hbone", true},
		{"hbone/...", "hbone/h3", true},
		{"hbone/...", "hbonex", false},
		{"identity", "identity/ca", false},
	}
	for _, tc := range tests {
		if got := match(tc.pattern, tc.p); got != tc.want {
			t.Errorf("match(%q, %q) = %v, want %v", tc.pattern, tc.p, got, tc.want)
		}
	}
}
