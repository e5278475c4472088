package scale

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/policy"
)

var benchTarget = Target{
	Namespace: "mesh", Labels: map[string]string{"app": "node2-pod0"},
	Client: "cluster.local/ns/mesh/sa/node1-pod0", Ports: []uint16{8078, 5201},
}

func parse(tb testing.TB, m *Mesh) *policy.Set {
	tb.Helper()
	seq := 0
	ms, probs, err := policy.ParseManifests("scale.yaml", []byte(m.Manifests), &seq)
	if err != nil {
		tb.Fatal(err)
	}
	if len(probs) > 0 {
		tb.Fatalf("problems: %v", probs.Err())
	}
	for _, a := range ms.Authorizations {
		if len(a.Warnings) > 0 {
			tb.Fatalf("%s: warnings %v", a.Ref(), a.Warnings)
		}
	}
	return policy.NewSet("", ms.Authorizations, ms.PeerAuthentications)
}

// The default mesh is what the benchmark claims: 1,000 valid policies, 100 of which apply
// to the target in the evaluator's order, a third of them DENY; the client is admitted
// by the last one only, everyone else is refused.
func TestGenerateDefault(t *testing.T) {
	m, err := Generate(benchTarget, Default())
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Workloads) != 10000 || len(m.Nodes) != 100 || len(m.Namespaces) != 50 {
		t.Fatalf("%d workloads, %d nodes, %d namespaces", len(m.Workloads), len(m.Nodes), len(m.Namespaces))
	}
	opts := Default()
	names, ips := map[string]bool{}, map[netip.Addr]bool{}
	for _, w := range m.Workloads {
		if names[w.Namespace+"/"+w.Name] || ips[w.IP] || !opts.WorkloadIPs.Contains(w.IP) {
			t.Fatalf("workload %+v: repeated or outside %s", w, opts.WorkloadIPs)
		}
		names[w.Namespace+"/"+w.Name], ips[w.IP] = true, true
	}
	for _, n := range m.Nodes {
		if ips[n.IP] || !opts.NodeIPs.Contains(n.IP) {
			t.Fatalf("node %+v: repeated or outside %s", n, opts.NodeIPs)
		}
		ips[n.IP] = true
	}

	s := parse(t, m)
	if n := len(s.AuthorizationPolicies()); n != 1000 || m.Policies != n {
		t.Fatalf("%d policies parsed, %d claimed", n, m.Policies)
	}
	applied := s.For(benchTarget.Namespace, benchTarget.Labels)
	var got []string
	deny := 0
	for _, p := range applied.Authorizations() {
		got = append(got, p.Ref())
		if p.Action == policy.ActionDeny {
			deny++
		}
	}
	if !slices.Equal(got, m.Applying) || len(got) != 100 {
		t.Fatalf("applying to the target:\n%v\nclaimed:\n%v", got, m.Applying)
	}
	if deny != m.Deny || deny < 30 || m.Admit != got[len(got)-1] {
		t.Fatalf("%d DENY (claimed %d), admit %s", deny, m.Deny, m.Admit)
	}
	if !strings.HasPrefix(got[0], "istio-system/") {
		t.Errorf("no root-namespace policy applies: first is %s", got[0])
	}

	client := netip.MustParseAddr("198.18.1.10")
	dst := netip.MustParseAddr("198.18.2.10")
	for _, tc := range []struct {
		name   string
		in     policy.Input
		allow  bool
		policy string
	}{
		{"the client on the echo port", policy.Input{Principal: benchTarget.Client, SrcIP: client, DstIP: dst, DstPort: 8078}, true, m.Admit},
		{"the client on the iperf3 port", policy.Input{Principal: benchTarget.Client, SrcIP: client, DstIP: dst, DstPort: 5201}, true, m.Admit},
		{"the client on another port", policy.Input{Principal: benchTarget.Client, SrcIP: client, DstIP: dst, DstPort: 9999}, false, ""},
	} {
		d := applied.Evaluate(&tc.in)
		if d.Allow != tc.allow || d.Policy != tc.policy {
			t.Errorf("%s: %v, want allow=%v by %q", tc.name, d, tc.allow, tc.policy)
		}
	}
	// Another account gets in by an earlier policy (notPrincipals), not the admitting one.
	if d := applied.Evaluate(&policy.Input{Principal: "cluster.local/ns/mesh/sa/other", SrcIP: client, DstIP: dst, DstPort: 8078}); !d.Allow || d.Policy == m.Admit {
		t.Errorf("another account: %v", d)
	}
	// Plaintext is refused by a DENY (notNamespaces matches a peer without one).
	if d := applied.Evaluate(&policy.Input{SrcIP: client, DstIP: dst, DstPort: 8078}); d.Allow {
		t.Errorf("plaintext: %v", d)
	}
	// The synthetic workloads have policies of their own; the target's do not reach them.
	w := m.Workloads[7]
	a := s.For(w.Namespace, w.Labels).Authorizations()
	if len(a) == 0 {
		t.Errorf("%s/%s: no policy applies", w.Namespace, w.Name)
	}
	for _, p := range a {
		if slices.Contains(m.Applying, p.Ref()) {
			t.Errorf("%s/%s: the target's %s applies", w.Namespace, w.Name, p.Ref())
		}
	}
}

func TestGenerateRefuses(t *testing.T) {
	small := Default()
	small.WorkloadIPs = netip.MustParsePrefix("198.19.64.0/24")
	tests := []struct {
		name string
		edit func(*Target, *Options)
		want string
	}{
		{"bad principal", func(t *Target, _ *Options) { t.Client = "spiffe://cluster.local/ns/a/sa/b" }, "want td/ns/"},
		{"target in the root namespace", func(t *Target, _ *Options) { t.Namespace = "istio-system" }, "root namespace"},
		{"client in a synthetic namespace", func(t *Target, _ *Options) { t.Client = "cluster.local/ns/scale-01/sa/x" }, "must not start"},
		{"target label like a synthetic selector", func(t *Target, _ *Options) { t.Labels = map[string]string{"app": "app-3"} }, "must not start"},
		{"no ports", func(t *Target, _ *Options) { t.Ports = nil }, "needs a namespace"},
		{"more applying than policies", func(_ *Target, o *Options) { o.Applying = o.Policies + 1 }, "want 1 to"},
		{"too many workloads for the prefix", func(_ *Target, o *Options) { *o = small }, "outside 198.19.64.0/24"},
		{"IPv6", func(_ *Target, o *Options) { o.NodeIPs = netip.MustParsePrefix("fd00::/64") }, "IPv4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg, o := benchTarget, Default()
			tc.edit(&tg, &o)
			_, err := Generate(tg, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// Small meshes stay valid: one applying policy (the admitting one), prefixes narrower
// than a /24.
func TestGenerateSmall(t *testing.T) {
	o := Options{Workloads: 5, Namespaces: 2, Nodes: 1, Policies: 10, Applying: 1,
		WorkloadIPs: netip.MustParsePrefix("198.19.64.0/28"), NodeIPs: netip.MustParsePrefix("198.19.128.0/30")}
	m, err := Generate(benchTarget, o)
	if err != nil {
		t.Fatal(err)
	}
	s := parse(t, m)
	a := s.For(benchTarget.Namespace, benchTarget.Labels).Authorizations()
	if len(a) != 1 || a[0].Ref() != m.Admit || len(s.AuthorizationPolicies()) != 10 {
		t.Fatalf("applying %d (admit %s), %d in all", len(a), m.Admit, len(s.AuthorizationPolicies()))
	}
}
