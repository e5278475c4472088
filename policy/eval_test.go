package policy

import (
	"net/netip"
	"strings"
	"testing"
)

const (
	frontend = "cluster.local/ns/web/sa/frontend"
	backend  = "cluster.local/ns/api/sa/backend"
	other    = "cluster.local/ns/other/sa/frontend"
)

// set parses manifests (documents joined with ---) into a Set, failing the test on
// problems unless the case expects an invalid object.
func set(tb testing.TB, manifests string, allowProblems bool) *Set {
	tb.Helper()
	seq := 0
	m, probs, err := ParseManifests("policies.yaml", []byte(manifests), &seq)
	if err != nil {
		tb.Fatalf("parse: %v", err)
	}
	if len(probs) > 0 && !allowProblems {
		tb.Fatalf("problems: %v", probs.Err())
	}
	return NewSet("", m.Authorizations, m.PeerAuthentications)
}

// conn is a connection to pod "api/backend" (labels app=backend) port 8080.
func conn(principal, src string) *Input {
	return &Input{Principal: principal, SrcIP: netip.MustParseAddr(src), DstIP: netip.MustParseAddr("198.18.1.10"), DstPort: 8080}
}

func withPort(in *Input, p uint16) *Input { in.DstPort = p; return in }

func ap(ns, name, spec string) string {
	return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name +
		"\n  namespace: " + ns + "\n" + spec + "\n---\n"
}

func TestEvaluate(t *testing.T) {
	denyAll := ap("api", "deny-all", "spec: {}")
	allowFrontend := ap("api", "allow-frontend", `spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/web/sa/frontend"]`)
	tests := []struct {
		name      string
		manifests string
		in        *Input
		labels    map[string]string
		allow     bool
		policy    string // "" for no deciding policy
		rule      int
		invalid   bool
	}{
		{name: "no policy allows", in: conn(frontend, "198.18.0.10"), allow: true, rule: -1},
		{name: "spec {} denies everything in scope", manifests: denyAll, in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "deny-all in another namespace does not apply", manifests: ap("web", "deny-all", "spec: {}"),
			in: conn(frontend, "198.18.0.10"), allow: true, rule: -1},
		{name: "allow one principal", manifests: denyAll + allowFrontend, in: conn(frontend, "198.18.0.10"),
			allow: true, policy: "api/allow-frontend", rule: 0},
		{name: "another principal is refused", manifests: denyAll + allowFrontend, in: conn(backend, "198.18.0.10"), rule: -1},
		{name: "same account name, other namespace, refused", manifests: denyAll + allowFrontend, in: conn(other, "198.18.0.10"), rule: -1},
		{name: "plaintext has no principal", manifests: allowFrontend, in: conn("", "198.18.0.10"), rule: -1},
		{name: "principal prefix", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {principals: ["cluster.local/ns/web/*"]}}]}]`), in: conn(frontend, "198.18.0.10"),
			allow: true, policy: "api/p", rule: 0},
		{name: "principal suffix", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {principals: ["*/sa/frontend"]}}]}]`), in: conn(other, "198.18.0.10"),
			allow: true, policy: "api/p", rule: 0},
		{name: "principal presence matches any mesh peer", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {principals: ["*"]}}]}]`), in: conn(backend, "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "principal presence refuses plaintext", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {principals: ["*"]}}]}]`), in: conn("", "198.18.0.10"), rule: -1},
		{name: "notPrincipals", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {notPrincipals: ["cluster.local/ns/web/sa/frontend"]}}]}]`), in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "notPrincipals matches plaintext", manifests: ap("api", "p", `spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]`), in: conn("", "198.18.0.10"), policy: "api/p", rule: 0},
		{name: "namespaces", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {namespaces: ["web"]}}]}]`), in: conn(frontend, "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "notNamespaces", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {notNamespaces: ["web"]}}]}]`), in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "serviceAccounts with namespace", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {serviceAccounts: ["web/frontend"]}}]}]`), in: conn(frontend, "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "serviceAccounts without namespace is the policy's", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {serviceAccounts: ["backend"]}}]}]`), in: conn(backend, "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "serviceAccounts refuses plaintext", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {serviceAccounts: ["backend"]}}]}]`), in: conn("", "198.18.0.10"), rule: -1},
		{name: "ipBlocks CIDR", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {ipBlocks: ["198.18.0.0/24"]}}]}]`), in: conn("", "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "ipBlocks single address", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {ipBlocks: ["198.18.0.11"]}}]}]`), in: conn("", "198.18.0.10"), rule: -1},
		{name: "notIpBlocks", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {notIpBlocks: ["198.18.0.0/24"]}}]}]`), in: conn("", "198.18.0.10"), rule: -1},
		{name: "ports", manifests: ap("api", "p", `spec:
  rules: [{to: [{operation: {ports: ["8080"]}}]}]`), in: conn("", "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "other port refused", manifests: ap("api", "p", `spec:
  rules: [{to: [{operation: {ports: ["8080"]}}]}]`), in: withPort(conn("", "198.18.0.10"), 9090), rule: -1},
		{name: "notPorts", manifests: ap("api", "p", `spec:
  rules: [{to: [{operation: {notPorts: ["8080"]}}]}]`), in: conn("", "198.18.0.10"), rule: -1},
		{name: "fields of a source are ANDed", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {namespaces: ["web"], ipBlocks: ["198.18.9.0/24"]}}]}]`), in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "from entries are ORed", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {namespaces: ["nope"]}}, {source: {ipBlocks: ["198.18.0.0/16"]}}]}]`), in: conn(frontend, "198.18.0.10"),
			allow: true, policy: "api/p", rule: 0},
		{name: "from and to both needed", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {namespaces: ["web"]}}], to: [{operation: {ports: ["9090"]}}]}]`), in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "rules are ORed, second rule decides", manifests: ap("api", "p", `spec:
  rules:
  - from: [{source: {namespaces: ["nope"]}}]
  - to: [{operation: {ports: ["8080"]}}]`), in: conn(frontend, "198.18.0.10"), allow: true, policy: "api/p", rule: 1},
		{name: "empty rule matches everything", manifests: ap("api", "p", `spec:
  rules: [{}]`), in: conn("", "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "when source.ip", manifests: ap("api", "p", `spec:
  rules: [{when: [{key: source.ip, values: ["198.18.0.0/24"]}]}]`), in: conn("", "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "when source.namespace notValues", manifests: ap("api", "p", `spec:
  rules: [{when: [{key: source.namespace, notValues: ["web"]}]}]`), in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "when source.principal", manifests: ap("api", "p", `spec:
  rules: [{when: [{key: source.principal, values: ["*/sa/frontend"]}]}]`), in: conn(frontend, "198.18.0.10"), allow: true, policy: "api/p", rule: 0},
		{name: "when destination.ip and port are ANDed", manifests: ap("api", "p", `spec:
  rules: [{when: [{key: destination.ip, values: ["198.18.1.10"]}, {key: destination.port, values: ["9090"]}]}]`),
			in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "DENY beats ALLOW", manifests: allowFrontend + ap("api", "no-web", `spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["web"]}}]}]`), in: conn(frontend, "198.18.0.10"), policy: "api/no-web", rule: 0},
		{name: "non-matching DENY leaves ALLOW", manifests: allowFrontend + ap("api", "no-other", `spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["other"]}}]}]`), in: conn(frontend, "198.18.0.10"), allow: true, policy: "api/allow-frontend", rule: 0},
		{name: "DENY with no rules matches nothing", manifests: ap("api", "p", `spec:
  action: DENY`), in: conn(frontend, "198.18.0.10"), allow: true, rule: -1},
		{name: "AUDIT never decides", manifests: ap("api", "p", `spec:
  action: AUDIT
  rules: [{}]`), in: conn(frontend, "198.18.0.10"), allow: true, rule: -1},
		{name: "selector selects", manifests: ap("api", "p", `spec:
  selector: {matchLabels: {app: backend}}`), labels: map[string]string{"app": "backend"}, in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "selector does not select", manifests: ap("api", "p", `spec:
  selector: {matchLabels: {app: other}}`), labels: map[string]string{"app": "backend"}, in: conn(frontend, "198.18.0.10"), allow: true, rule: -1},
		{name: "root namespace applies mesh-wide", manifests: ap("istio-system", "mesh-deny", `spec: {}`),
			in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "root namespace selector selects every namespace", manifests: ap("istio-system", "p", `spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{}]`), labels: map[string]string{"app": "backend"}, in: conn(frontend, "198.18.0.10"), policy: "istio-system/p", rule: 0},
		{name: "targetRefs are the waypoint's", manifests: ap("api", "p", `spec:
  targetRefs: [{kind: Service, group: "", name: backend}]`), in: conn(frontend, "198.18.0.10"), allow: true, rule: -1},
		{name: "ALLOW rule with HTTP fields never matches at L4", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {namespaces: ["web"]}}], to: [{operation: {methods: ["GET"]}}]}]`), in: conn(frontend, "198.18.0.10"), rule: -1},
		{name: "DENY rule with HTTP fields denies more at L4", manifests: ap("api", "p", `spec:
  action: DENY
  rules: [{to: [{operation: {methods: ["POST"]}}]}]`), in: conn(frontend, "198.18.0.10"), policy: "api/p", rule: 0},
		{name: "DENY with HTTP when key denies more at L4", manifests: ap("api", "p", `spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["web"]}}], when: [{key: "request.headers[x-test]", values: ["a"]}]}]`),
			in: conn(frontend, "198.18.0.10"), policy: "api/p", rule: 0},
		{name: "dry run does not enforce", manifests: ap("api", "p", `  annotations: {istio.io/dry-run: "true"}
spec: {}`), in: conn(frontend, "198.18.0.10"), allow: true, rule: -1},
		{name: "invalid DENY denies everything it selects", manifests: ap("api", "p", `spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["198.18.0.300"]}}]}]`), in: conn(backend, "198.18.9.9"), policy: "api/p", rule: -1, invalid: true},
		{name: "invalid ALLOW matches nothing", manifests: ap("api", "p", `spec:
  rules: [{from: [{source: {ipBlocks: ["not-an-ip"]}}]}]`), in: conn(frontend, "198.18.0.10"), rule: -1, invalid: true},
		{name: "invalid ALLOW leaves a valid one working", manifests: allowFrontend + ap("api", "p", `spec:
  rules: [{from: [{source: {bogus: ["x"]}}]}]`), in: conn(frontend, "198.18.0.10"), allow: true, policy: "api/allow-frontend", rule: 0, invalid: true},
		{name: "CUSTOM is refused and fails closed", manifests: ap("api", "p", `spec:
  action: CUSTOM
  provider: {name: ext}
  rules: [{}]`), in: conn(frontend, "198.18.0.10"), policy: "api/p", rule: -1, invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := set(t, tt.manifests, tt.invalid)
			labels := tt.labels
			d := s.For("api", labels).Evaluate(tt.in)
			if d.Allow != tt.allow || d.Policy != tt.policy || d.Rule != tt.rule {
				t.Errorf("decision %+v, want allow=%v policy=%q rule=%d", d, tt.allow, tt.policy, tt.rule)
			}
		})
	}
}

func TestDryRunAndAudit(t *testing.T) {
	s := set(t, ap("api", "shadow", `  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["web"]}}]}]`)+ap("api", "audit", `spec:
  action: AUDIT
  rules: [{to: [{operation: {ports: ["8080"]}}]}]`), false)
	d := s.For("api", nil).Evaluate(conn(frontend, "198.18.0.10"))
	if !d.Allow {
		t.Fatalf("dry-run DENY enforced: %+v", d)
	}
	if d.DryRun == nil || d.DryRun.Allow || d.DryRun.Policy != "api/shadow" {
		t.Errorf("dry-run decision %+v, want deny by api/shadow", d.DryRun)
	}
	if len(d.Audit) != 1 || d.Audit[0] != "api/audit" {
		t.Errorf("audit %v, want [api/audit]", d.Audit)
	}
	d = s.For("api", nil).Evaluate(conn(backend, "198.18.0.10"))
	if d.DryRun == nil || !d.DryRun.Allow {
		t.Errorf("dry-run decision for another namespace %+v, want allow", d.DryRun)
	}
}

func pa(ns, name, created, spec string) string {
	meta := "  name: " + name + "\n  namespace: " + ns + "\n"
	if created != "" {
		meta += "  creationTimestamp: \"" + created + "\"\n"
	}
	return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n" + meta + spec + "\n---\n"
}

func TestMTLSMode(t *testing.T) {
	backendLabels := map[string]string{"app": "backend"}
	tests := []struct {
		name      string
		manifests string
		port      uint16
		want      Mode
		by        string
	}{
		{name: "default is PERMISSIVE", port: 8080, want: ModePermissive},
		{name: "mesh STRICT", manifests: pa("istio-system", "default", "", "spec: {mtls: {mode: STRICT}}"), port: 8080, want: ModeStrict, by: "istio-system/default"},
		{name: "namespace beats mesh", manifests: pa("istio-system", "default", "", "spec: {mtls: {mode: STRICT}}") +
			pa("api", "ns", "", "spec: {mtls: {mode: PERMISSIVE}}"), port: 8080, want: ModePermissive, by: "api/ns"},
		{name: "workload beats namespace", manifests: pa("api", "ns", "", "spec: {mtls: {mode: PERMISSIVE}}") +
			pa("api", "wl", "", "spec: {selector: {matchLabels: {app: backend}}, mtls: {mode: STRICT}}"), port: 8080, want: ModeStrict, by: "api/wl"},
		{name: "UNSET inherits", manifests: pa("api", "ns", "", "spec: {mtls: {mode: STRICT}}") +
			pa("api", "wl", "", "spec: {selector: {matchLabels: {app: backend}}, mtls: {mode: UNSET}}"), port: 8080, want: ModeStrict, by: "api/ns"},
		{name: "port level overrides", manifests: pa("api", "wl", "", `spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}`), port: 8080, want: ModeDisable, by: "api/wl"},
		{name: "port level leaves other ports", manifests: pa("api", "wl", "", `spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}`), port: 9090, want: ModeStrict, by: "api/wl"},
		{name: "oldest namespace policy wins", manifests: pa("api", "b-new", "2026-02-01T00:00:00Z", "spec: {mtls: {mode: STRICT}}") +
			pa("api", "a-old", "2026-01-01T00:00:00Z", "spec: {mtls: {mode: DISABLE}}"), port: 8080, want: ModeDisable, by: "api/a-old"},
		{name: "without timestamps the first written wins", manifests: pa("api", "first", "", "spec: {mtls: {mode: DISABLE}}") +
			pa("api", "second", "", "spec: {mtls: {mode: STRICT}}"), port: 8080, want: ModeDisable, by: "api/first"},
		{name: "other namespace does not apply", manifests: pa("web", "ns", "", "spec: {mtls: {mode: STRICT}}"), port: 8080, want: ModePermissive},
		{name: "root selector selects every namespace", manifests: pa("istio-system", "wl", "", "spec: {selector: {matchLabels: {app: backend}}, mtls: {mode: STRICT}}"),
			port: 8080, want: ModeStrict, by: "istio-system/wl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := set(t, tt.manifests, false)
			mode, by := s.For("api", backendLabels).MTLS(tt.port)
			ref := ""
			if by != nil {
				ref = by.Ref()
			}
			if mode != tt.want || ref != tt.by {
				t.Errorf("mode %v by %q, want %v by %q", mode, ref, tt.want, tt.by)
			}
		})
	}
}

func TestInvalidPeerAuthenticationIsStrict(t *testing.T) {
	s := set(t, pa("api", "bad", "", `spec:
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: DISABLE}`), true)
	if mode, _ := s.For("api", nil).MTLS(8080); mode != ModeStrict {
		t.Errorf("mode %v, want STRICT (port-level without selector is invalid and fails closed)", mode)
	}
}

func TestProblemsNameFileLineAndField(t *testing.T) {
	tests := []struct {
		name, manifests, want string
	}{
		{"unknown field", ap("api", "p", "spec:\n  rules:\n  - from:\n    - source:\n        principal: [x]"),
			`policies.yaml:10: spec.rules[0].from[0].source.principal: unknown field`},
		{"bad CIDR", ap("api", "p", "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"198.18.0.0/33\"]"),
			`policies.yaml:10: spec.rules[0].from[0].source.ipBlocks[0]: "198.18.0.0/33" is not an IP address or CIDR`},
		{"bad port", ap("api", "p", "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]"),
			`policies.yaml:10: spec.rules[0].to[0].operation.ports[0]: "http" is not a port (1-65535)`},
		{"number for a string", ap("api", "p", "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [80]"),
			`policies.yaml:10: spec.rules[0].to[0].operation.ports[0]: expected a string, got the number 80`},
		{"malformed principal", ap("api", "p", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/*/sa/x\"]"),
			`a wildcard may only be the first or the last character`},
		{"spiffe prefix", ap("api", "p", "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"spiffe://cluster.local/ns/a/sa/b\"]"),
			`write principals without spiffe://`},
		{"unknown action", ap("api", "p", "spec:\n  action: REJECT"),
			`policies.yaml:7: spec.action: "REJECT" is not one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"bad name", ap("api", "Bad_Name", "spec: {}"), `policies.yaml:4: metadata.name: "Bad_Name"`},
		{"unknown when key", ap("api", "p", "spec:\n  rules:\n  - when:\n    - key: source.port\n      values: [\"1\"]"),
			`policies.yaml:9: spec.rules[0].when[0].key: unknown key "source.port"`},
		{"bad dry-run", ap("api", "p", "  annotations: {istio.io/dry-run: \"maybe\"}\nspec: {}"),
			`metadata.annotations["istio.io/dry-run"]: "maybe" is not true or false`},
		{"unknown kind", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: x}\n",
			`policies.yaml:1: kind: "RequestAuthentication" is not AuthorizationPolicy or PeerAuthentication`},
		{"wrong group", "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n",
			`apiVersion: "networking.istio.io/v1" is not security.istio.io/v1`},
		{"unknown metadata field", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, nmespace: y}\n",
			`metadata: unknown field "nmespace"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seq := 0
			_, probs, _ := ParseManifests("policies.yaml", []byte(tt.manifests), &seq)
			err := probs.Err()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestSyntaxErrorRejectsFile(t *testing.T) {
	seq := 0
	m, _, err := ParseManifests("p.yaml", []byte("kind: [unclosed\n"), &seq)
	if err == nil || len(m.Authorizations) != 0 || !strings.HasPrefix(err.Error(), "p.yaml:") {
		t.Errorf("got %v, %v; want a file:line syntax error and nothing", m, err)
	}
}

func TestWarningsNameHTTPFields(t *testing.T) {
	s := set(t, ap("api", "p", `spec:
  rules: [{to: [{operation: {methods: ["GET"], paths: ["/api"]}}]}]`), false)
	w := s.AuthorizationPolicies()[0].Warnings
	if len(w) != 1 || !strings.Contains(w[0], "to.operation.methods") || !strings.Contains(w[0], "never matches") {
		t.Errorf("warnings %q", w)
	}
}
