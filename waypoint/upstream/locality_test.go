package upstream

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func priorities(c *Cluster) []int {
	var out []int
	for _, e := range c.Snapshot().Endpoints {
		out = append(out, e.Priority)
	}
	return out
}

func TestPriorityAssignment(t *testing.T) {
	withOD := func(l LocalityPolicy) *Policy {
		p := odPolicy(nil)
		p.Locality = l
		return p
	}
	on := LocalityPolicy{Enabled: true}
	tests := []struct {
		name   string
		pol    *Policy
		local  string // "region/zone/subzone@node"
		labels map[string]string
		eps    []Endpoint
		want   []int
	}{
		{"region, zone, subzone", withOD(on), "us-east/z1/s1", nil,
			at(endpoints(5), "us-east/z1/s1", "us-east/z1/s2", "us-east/z2/s1", "eu-west/z1/s1", "us-east/z1/s1"),
			[]int{0, 1, 2, 3, 0}},
		{"compacted", withOD(on), "us-east/z1", nil,
			at(endpoints(3), "eu-west/z1", "us-east/z2", "us-east/z2"), []int{1, 0, 0}},
		{"off without outlier detection", &Policy{LB: defaultLB(), Locality: on, Limits: defaultLimits()}, "us-east/z1", nil,
			at(endpoints(2), "us-east/z1", "eu-west/z1"), []int{0, 0}},
		{"forced without outlier detection", &Policy{LB: defaultLB(), Locality: LocalityPolicy{Enabled: true, Force: true}, Limits: defaultLimits()},
			"us-east/z1", nil, at(endpoints(2), "us-east/z1", "eu-west/z1"), []int{0, 1}},
		{"disabled", withOD(LocalityPolicy{}), "us-east/z1", nil, at(endpoints(2), "us-east/z1", "eu-west/z1"), []int{0, 0}},
		{"region failover", withOD(LocalityPolicy{Enabled: true, Failover: []Failover{{From: "us-east", To: "eu-west"}}}), "us-east/z1", nil,
			at(endpoints(4), "ap-south/z1", "eu-west/z1", "us-east/z2", "us-east/z1"), []int{3, 2, 1, 0}},
		{"failover of another region does not apply", withOD(LocalityPolicy{Enabled: true, Failover: []Failover{{From: "us-west", To: "eu-west"}}}),
			"us-east/z1", nil, at(endpoints(2), "ap-south/z1", "eu-west/z1"), []int{0, 0}},
		{"failover priority labels", withOD(LocalityPolicy{Enabled: true, FailoverPriority: []string{"version", LabelZone}}),
			"us-east/z1", map[string]string{"version": "v1"},
			func() []Endpoint {
				eps := at(endpoints(4), "us-east/z1", "us-east/z2", "us-east/z1", "eu-west/z9")
				eps[0].Labels = map[string]string{"version": "v1"}
				eps[1].Labels = map[string]string{"version": "v1"}
				eps[2].Labels = map[string]string{"version": "v2"}
				eps[3].Labels = map[string]string{"version": "v1", LabelZone: "z1"} // an explicit label wins
				return eps
			}(), []int{0, 1, 2, 0}},
		{"failover priority with a value", withOD(LocalityPolicy{Enabled: true, FailoverPriority: []string{"version=v2"}}),
			"us-east/z1", map[string]string{"version": "v1"},
			func() []Endpoint {
				eps := endpoints(2)
				eps[0].Labels = map[string]string{"version": "v1"}
				eps[1].Labels = map[string]string{"version": "v2"}
				return eps
			}(), []int{1, 0}},
		{"failover priority and region failover", withOD(LocalityPolicy{Enabled: true, FailoverPriority: []string{"version"},
			Failover: []Failover{{From: "us-east", To: "eu-west"}}}), "us-east/z1", map[string]string{"version": "v1"},
			func() []Endpoint {
				eps := at(endpoints(4), "eu-west/z1", "ap-south/z1", "eu-west/z1", "us-east/z1")
				for i, v := range []string{"v1", "v1", "v2", "v2"} {
					eps[i].Labels = map[string]string{"version": v}
				}
				return eps
			}(), []int{0, 1, 3, 2}}, // (label priority)*5 + locality priority: 3, 4, 8, 5
		{"failover priority without the waypoint's labels", withOD(LocalityPolicy{Enabled: true, FailoverPriority: []string{"version"}}),
			"", nil, func() []Endpoint {
				eps := endpoints(2)
				eps[1].Labels = map[string]string{"version": "v1"}
				return eps
			}(), []int{0, 0}},
		{"same node", withOD(LocalityPolicy{Enabled: true, FailoverPriority: []string{LabelRegion, LabelZone, LabelHostname}}),
			"us-east/z1@n1", nil, func() []Endpoint {
				eps := at(endpoints(3), "us-east/z1", "us-east/z1", "us-east/z2")
				eps[0].Node, eps[1].Node, eps[2].Node = "n2", "n1", "n1"
				return eps
			}(), []int{1, 0, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local, node, _ := strings.Cut(tt.local, "@")
			c := newCluster(t, ClusterConfig{Policy: tt.pol, Locality: loc(local), Labels: tt.labels, Node: node}, nil, tt.eps...)
			if got := priorities(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("priorities %v, want %v", got, tt.want)
			}
		})
	}
}

func shares(tb testing.TB, c *Cluster) []float64 {
	tb.Helper()
	const n = 10000
	got := counts(tb, c, n, nil)
	out := make([]float64, len(c.Snapshot().Endpoints))
	for i := range out {
		out[i] = float64(got[addr(i)]) / n
	}
	return out
}

func near(got, want []float64, tol float64) bool {
	for i := range want {
		if math.Abs(got[i]-want[i]) > tol {
			return false
		}
	}
	return true
}

func TestFailoverAndReturn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pol := odPolicy(nil)
		pol.LB.Algorithm = RoundRobin
		c := newCluster(t, ClusterConfig{Policy: pol, Locality: loc("us-east/z1")}, nil,
			at(endpoints(4), "us-east/z1", "us-east/z1", "us-east/z2", "us-east/z2")...)
		if got := shares(t, c); !near(got, []float64{.5, .5, 0, 0}, .001) {
			t.Fatalf("local zone healthy: shares %v", got)
		}
		results(hostOf(t, c, addr(0)), err503, 5)
		results(hostOf(t, c, addr(1)), err503, 5)
		if got := shares(t, c); !near(got, []float64{0, 0, .5, .5}, .001) {
			t.Fatalf("local zone ejected: shares %v", got)
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := shares(t, c); !near(got, []float64{.5, .5, 0, 0}, .001) {
			t.Fatalf("local zone back: shares %v", got)
		}
	})
}

func TestOverprovisioning(t *testing.T) {
	tests := []struct {
		ejected int // of the 5 P0 hosts
		load    []uint32
	}{
		{0, []uint32{100}},
		{1, []uint32{100, 0}}, // 80% healthy x 1.4 = 112%: P0 keeps it all
		{2, []uint32{84, 16}}, // 60% x 1.4
		{3, []uint32{56, 44}},
		{5, []uint32{0, 100}},
	}
	for _, tt := range tests {
		synctest.Test(t, func(t *testing.T) {
			pol := odPolicy(nil)
			pol.LB.Algorithm = Random
			c := newCluster(t, ClusterConfig{Policy: pol, Locality: loc("r/z1")}, nil,
				at(endpoints(10), "r/z1", "r/z1", "r/z1", "r/z1", "r/z1", "r/z2", "r/z2", "r/z2", "r/z2", "r/z2")...)
			for i := range tt.ejected {
				results(hostOf(t, c, addr(i)), err503, 5)
			}
			var load []uint32
			for _, p := range c.Snapshot().Priorities {
				load = append(load, p.Load)
			}
			if tt.ejected == 0 {
				load = load[:1]
			}
			if !reflect.DeepEqual(load, tt.load) {
				t.Errorf("%d ejected: loads %v, want %v", tt.ejected, load, tt.load)
			}
			got := shares(t, c)
			var p0, p1 float64
			for i, s := range got {
				if i < 5 {
					p0 += s
				} else {
					p1 += s
				}
			}
			if math.Abs(p0-float64(tt.load[0])/100) > .02 {
				t.Errorf("%d ejected: P0 takes %.3f, P1 %.3f", tt.ejected, p0, p1)
			}
		})
	}
}

func TestDistribute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pol := odPolicy(nil)
		pol.LB.Algorithm = RoundRobin
		pol.Locality = LocalityPolicy{Enabled: true, Distribute: []Distribute{
			{From: "us-west/*", To: []LocalityWeight{{"us-west/*", 100}}},
			{From: "us-east/z1/*", To: []LocalityWeight{{"us-east/z1/*", 80}, {"us-east/z2/*", 20}}},
		}}
		c := newCluster(t, ClusterConfig{Policy: pol, Locality: loc("us-east/z1/s1")}, nil,
			at(endpoints(5), "us-east/z1/s1", "us-east/z1/s2", "us-east/z2/s1", "us-east/z2/s1", "eu-west/z1")...)
		if got := priorities(c); !reflect.DeepEqual(got, []int{0, 0, 0, 0, -1}) {
			t.Errorf("priorities %v: eu-west should get nothing", got)
		}
		// Within z1, the two subzones are separate localities sharing z1's 80.
		if got := shares(t, c); !near(got, []float64{.4, .4, .1, .1, 0}, .02) {
			t.Errorf("shares %v", got)
		}
		// An ejection scales its locality's weight by the locality's
		// availability: z2 is 50% healthy, x 1.4 = 70% of 20.
		results(hostOf(t, c, addr(2)), err503, 5)
		if got := shares(t, c); !near(got, []float64{40. / 94, 40. / 94, 0, 14. / 94, 0}, .02) {
			t.Errorf("after an ejection: shares %v", got)
		}
	})
}
