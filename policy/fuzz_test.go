package policy

import (
	"net/netip"
	"testing"
)

// FuzzParseManifests: no input crashes the decoder, every object it returns either
// compiles or fails closed, and every problem names its file.
func FuzzParseManifests(f *testing.F) {
	for _, seed := range []string{
		ap("api", "p", "spec: {}"),
		ap("api", "p", `spec:
  selector: {matchLabels: {app: a}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/*"], notIpBlocks: ["198.18.0.0/15"]}}]
    to: [{operation: {ports: ["80"], methods: ["GET"]}}]
    when: [{key: destination.port, values: ["80"]}, {key: "request.headers[x]", notValues: ["y"]}]`),
		pa("api", "p", "2026-01-01T00:00:00Z", "spec: {selector: {matchLabels: {a: b}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}"),
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {action: 7, rules: [{when: [{key: source.ip}]}]}\n",
		"---\n---\n",
		"kind: [",
	} {
		f.Add([]byte(seed))
	}
	in := &Input{Principal: "cluster.local/ns/a/sa/b", SrcIP: netip.MustParseAddr("198.18.0.1"),
		DstIP: netip.MustParseAddr("198.18.0.2"), DstPort: 80}
	f.Fuzz(func(t *testing.T, data []byte) {
		seq := 0
		m, probs, err := ParseManifests("f.yaml", data, &seq)
		if err != nil {
			return
		}
		for _, p := range probs {
			if p.File != "f.yaml" {
				t.Fatalf("problem without its file: %v", p)
			}
		}
		for _, a := range m.Authorizations {
			if a.Invalid != nil && len(a.Rules) > 0 {
				t.Fatalf("invalid policy %s kept rules", a.Ref())
			}
		}
		for _, p := range m.PeerAuthentications {
			if p.Invalid != nil && len(p.Ports) > 0 {
				t.Fatalf("invalid PeerAuthentication %s kept ports", p.Ref())
			}
		}
		s := NewSet("", m.Authorizations, m.PeerAuthentications)
		for _, ns := range []string{"api", "default", DefaultRootNamespace} {
			a := s.For(ns, map[string]string{"app": "a"})
			_ = a.Evaluate(in)
			_, _ = a.MTLS(8080)
		}
	})
}
