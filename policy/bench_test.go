package policy

import (
	"net/netip"
	"testing"

	"github.com/ambitmesh/ambit/tests/scale"
)

// The benchmark's destination and client, as in tests/bench's ambit-policy path.
var scaleTarget = scale.Target{
	Namespace: "mesh", Labels: map[string]string{"app": "node2-pod0"},
	Client: "cluster.local/ns/mesh/sa/node1-pod0", Ports: []uint16{8078, 5201},
}

// scaleSet is the benchmark's synthetic mesh (1,000 AuthorizationPolicies, 100 applying
// to the target, 10,000 workloads) compiled into a Set.
func scaleSet(tb testing.TB) (*Set, *scale.Mesh) {
	tb.Helper()
	m, err := scale.Generate(scaleTarget, scale.Default())
	if err != nil {
		tb.Fatal(err)
	}
	seq := 0
	ms, probs, err := ParseManifests("scale.yaml", []byte(m.Manifests), &seq)
	if err != nil || len(probs) > 0 {
		tb.Fatalf("parse: %v %v", err, probs.Err())
	}
	return NewSet("", ms.Authorizations, ms.PeerAuthentications), m
}

// BenchmarkParseManifests is the cost of loading the 1,000 policies (every reload).
func BenchmarkParseManifests(b *testing.B) {
	m, err := scale.Generate(scaleTarget, scale.Default())
	if err != nil {
		b.Fatal(err)
	}
	data := []byte(m.Manifests)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		seq := 0
		if _, _, err := ParseManifests("scale.yaml", data, &seq); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSetFor is the policies of the destination, computed once per snapshot.
func BenchmarkSetFor(b *testing.B) {
	s, _ := scaleSet(b)
	for b.Loop() {
		s.For(scaleTarget.Namespace, scaleTarget.Labels)
	}
}

// BenchmarkSetForAllWorkloads is Set.For for each of the 10,000 workloads: the most a
// snapshot can cost (ztunnel computes only its local workloads', on first use).
func BenchmarkSetForAllWorkloads(b *testing.B) {
	s, m := scaleSet(b)
	for b.Loop() {
		for i := range m.Workloads {
			w := &m.Workloads[i]
			s.For(w.Namespace, w.Labels)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(m.Workloads)), "ns/workload")
}

// BenchmarkEvaluate is one connection's decision against the destination's 100
// policies: the client passes every DENY and every ALLOW but the last, which admits it.
// "walk" evaluates every time; "remembered" is Evaluate once the input has been seen,
// which is every connection of a client but its first.
func BenchmarkEvaluate(b *testing.B) {
	s, m := scaleSet(b)
	a := s.For(scaleTarget.Namespace, scaleTarget.Labels)
	for _, tc := range []struct {
		name   string
		in     Input
		policy string
	}{
		{"admitted", Input{Principal: scaleTarget.Client, SrcIP: netip.MustParseAddr("198.18.1.10"),
			DstIP: netip.MustParseAddr("198.18.2.10"), DstPort: 8078}, m.Admit},
		{"plaintext denied", Input{SrcIP: netip.MustParseAddr("198.18.1.11"),
			DstIP: netip.MustParseAddr("198.18.2.10"), DstPort: 8078}, ""},
	} {
		if d := a.Evaluate(&tc.in); d.Allow != (tc.policy != "") || tc.policy != "" && d.Policy != tc.policy {
			b.Fatalf("%s: decision %v, want %q", tc.name, d, tc.policy)
		}
		for _, how := range []struct {
			name string
			eval func(*Input) Decision
		}{{"walk", a.evaluate}, {"remembered", a.Evaluate}} {
			b.Run(tc.name+"/"+how.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					how.eval(&tc.in)
				}
			})
		}
	}
}
