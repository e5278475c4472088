package ztunnel

import (
	"maps"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ambitmesh/ambit/discovery"
)

// Zones of lbSnapshot: node1 and node3 are in zone a, node2 in zone b.
var (
	zoneA = discovery.Locality{Region: "r1", Zone: "a"}
	zoneB = discovery.Locality{Region: "r1", Zone: "b"}
)

// lbSnapshot is a mesh with four endpoints of service lb (and of lb-close, which
// prefers close endpoints): lb-a1 on node1 with the clients, lb-a2 on node3 (zone a
// too), lb-b1 and lb-b2 on node2 (zone b). Each endpoint has its own service account.
// The client "roamer" has no zone.
func lbSnapshot(tb testing.TB, mutate func(*discovery.Input)) *discovery.Snapshot {
	tb.Helper()
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	lb := map[string]string{"app": "lb"}
	w := func(name, node, addr string, labels map[string]string) *discovery.Workload {
		return &discovery.Workload{Name: name, Namespace: "mesh", ServiceAccount: name, Node: node,
			IPs: []netip.Addr{ip(addr)}, Labels: labels}
	}
	in := discovery.Input{
		Namespaces: []*discovery.Namespace{{Name: "mesh", Labels: ambient}},
		Nodes: []*discovery.Node{
			{Name: "node1", Addresses: []netip.Addr{ip("198.18.0.1")}, Locality: zoneA},
			{Name: "node2", Addresses: []netip.Addr{ip("198.18.0.2")}, Locality: zoneB},
			{Name: "node3", Addresses: []netip.Addr{ip("198.18.0.3")}, Locality: zoneA},
		},
		Workloads: []*discovery.Workload{
			w("client", "node1", "198.18.1.10", nil),
			w("lb-a1", "node1", "198.18.1.21", lb),
			w("lb-a2", "node3", "198.18.3.21", lb),
			w("lb-b1", "node2", "198.18.2.21", lb),
			w("lb-b2", "node2", "198.18.2.22", lb),
		},
		Services: []*discovery.Service{{
			Name: "lb", Namespace: "mesh", VIPs: []netip.Addr{ip("198.19.0.20")},
			Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: lb,
		}, {
			Name: "lb-close", Namespace: "mesh", VIPs: []netip.Addr{ip("198.19.0.21")},
			Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: lb,
			TrafficDistribution: discovery.TrafficDistributionPreferClose,
		}},
	}
	roamer := w("roamer", "node1", "198.18.1.11", nil)
	roamer.Locality = discovery.Locality{Region: "r1"} // a region only: no zone to prefer
	in.Workloads = append(in.Workloads, roamer)
	if mutate != nil {
		mutate(&in)
	}
	snap, err := discovery.Build(in, discovery.EnrollmentOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return snap
}

// Endpoint addresses of lbSnapshot.
var lbAddrs = map[string]netip.Addr{
	"lb-a1": ip("198.18.1.21"), "lb-a2": ip("198.18.3.21"), "lb-b1": ip("198.18.2.21"), "lb-b2": ip("198.18.2.22"),
}

// TestEndpointBackoff: consecutive failures pass an endpoint over for 1s, 2s, 4s, ...
// up to the cap; once the backoff is over it is healthy again (tried), a failure then
// doubles the backoff, a success forgets it.
func TestEndpointBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newEndpointHealth(time.Second, 5*time.Second)
		a := lbAddrs["lb-b1"]
		isHealthy := func() (ok bool) {
			h.view(time.Now(), func(healthy func(netip.Addr) bool) { ok = healthy(a) })
			return ok
		}
		for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
			if got := h.failed(a, reasonRefused, time.Now()); got != want {
				t.Fatalf("failure %d: backoff %s, want %s", i+1, got, want)
			}
			if isHealthy() {
				t.Fatalf("failure %d: healthy at once", i+1)
			}
			time.Sleep(want - time.Millisecond)
			if isHealthy() {
				t.Fatalf("failure %d: healthy before its backoff %s ended", i+1, want)
			}
			time.Sleep(time.Millisecond)
			if !isHealthy() {
				t.Fatalf("failure %d: not healthy once its backoff %s ended", i+1, want)
			}
		}
		d := h.dump(time.Now())
		if len(d) != 1 || d[0].Address != a.String() || d[0].Failures != 5 || d[0].Reason != reasonRefused || !d[0].Healthy {
			t.Fatalf("dump %+v", d)
		}
		h.succeeded(a)
		if !h.empty() || len(h.dump(time.Now())) != 0 {
			t.Fatalf("a success left %+v", h.dump(time.Now()))
		}
		if got := h.failed(a, reasonRefused, time.Now()); got != time.Second {
			t.Fatalf("after a success the backoff starts again at %s, want 1s", got)
		}
	})
}

// TestEndpointHealthPrune: endpoints that left every service are forgotten.
func TestEndpointHealthPrune(t *testing.T) {
	h := newEndpointHealth(time.Second, 30*time.Second)
	now := time.Now()
	gone := ip("198.18.9.9")
	h.failed(lbAddrs["lb-b1"], reasonRefused, now)
	h.failed(gone, reasonTimeout, now)
	h.prune(lbSnapshot(t, nil))
	d := h.dump(now)
	if len(d) != 1 || d[0].Address != "198.18.2.21" {
		t.Fatalf("after prune %+v, want only lb-b1's", d)
	}
	h.prune(lbSnapshot(t, func(in *discovery.Input) { in.Services = nil }))
	if !h.empty() {
		t.Fatalf("endpoints of no service kept: %+v", h.dump(now))
	}
}

// TestPickEndpoint: round robin over the endpoints not tried yet, healthy ones
// first, in the client's zone first when the service prefers close ones.
func TestPickEndpoint(t *testing.T) {
	tests := []struct {
		name      string
		svc       string
		client    string
		unhealthy []string
		tried     []string
		want      map[string]int // picks of 12
	}{
		{name: "round robin", svc: "lb", client: "client",
			want: map[string]int{"lb-a1": 3, "lb-a2": 3, "lb-b1": 3, "lb-b2": 3}},
		{name: "unhealthy skipped", svc: "lb", client: "client", unhealthy: []string{"lb-b1"},
			want: map[string]int{"lb-a1": 4, "lb-a2": 4, "lb-b2": 4}},
		{name: "all unhealthy still tried", svc: "lb", client: "client", unhealthy: []string{"lb-a1", "lb-a2", "lb-b1", "lb-b2"},
			want: map[string]int{"lb-a1": 3, "lb-a2": 3, "lb-b1": 3, "lb-b2": 3}},
		{name: "tried skipped", svc: "lb", client: "client", tried: []string{"lb-a1", "lb-b2"},
			want: map[string]int{"lb-a2": 6, "lb-b1": 6}},
		{name: "tried skipped before unhealthy", svc: "lb", client: "client", tried: []string{"lb-a1", "lb-a2", "lb-b1"}, unhealthy: []string{"lb-b2"},
			want: map[string]int{"lb-b2": 12}},
		{name: "prefer close", svc: "lb-close", client: "client",
			want: map[string]int{"lb-a1": 6, "lb-a2": 6}},
		{name: "prefer close, one close unhealthy", svc: "lb-close", client: "client", unhealthy: []string{"lb-a2"},
			want: map[string]int{"lb-a1": 12}},
		{name: "prefer close, none close healthy", svc: "lb-close", client: "client", unhealthy: []string{"lb-a1", "lb-a2"},
			want: map[string]int{"lb-b1": 6, "lb-b2": 6}},
		{name: "prefer close, close ones tried", svc: "lb-close", client: "client", tried: []string{"lb-a1", "lb-a2"},
			want: map[string]int{"lb-b1": 6, "lb-b2": 6}},
		{name: "prefer close, all unhealthy", svc: "lb-close", client: "client", unhealthy: []string{"lb-a1", "lb-a2", "lb-b1", "lb-b2"},
			want: map[string]int{"lb-a1": 3, "lb-a2": 3, "lb-b1": 3, "lb-b2": 3}},
		{name: "prefer close, client of no zone", svc: "lb-close", client: "roamer",
			want: map[string]int{"lb-a1": 3, "lb-a2": 3, "lb-b1": 3, "lb-b2": 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := lbSnapshot(t, nil)
			z := &Ztunnel{health: newEndpointHealth(time.Minute, time.Minute)}
			for _, name := range tt.unhealthy {
				z.health.failed(lbAddrs[name], reasonRefused, time.Now())
			}
			svc := snap.ServiceByName("mesh", tt.svc)
			src := snap.WorkloadByUID("mesh/" + tt.client)
			byAddr := map[netip.Addr]string{}
			for name, a := range lbAddrs {
				byAddr[a] = name
			}
			got := map[string]int{}
			for range 12 {
				rec := newRecord(dirOutbound, ap("198.18.1.10:40000"), ap("198.19.0.20:80"))
				for _, name := range tt.tried {
					rec.tryEndpoint(lbAddrs[name], len(svc.Endpoints))
				}
				ep, err := z.pickEndpoint(snap, svc, src, rec)
				if err != nil {
					t.Fatal(err)
				}
				if rec.attempts != len(tt.tried)+1 || !rec.triedAddr(ep.Addr) {
					t.Fatalf("the pick of %s is not among the record's tries %v", ep.Addr, rec.tried[:rec.attempts])
				}
				got[byAddr[ep.Addr]]++
			}
			if !maps.Equal(got, tt.want) {
				t.Fatalf("picks %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("every endpoint tried", func(t *testing.T) {
		snap := lbSnapshot(t, nil)
		z := &Ztunnel{}
		svc := snap.ServiceByName("mesh", "lb")
		rec := newRecord(dirOutbound, ap("198.18.1.10:40000"), ap("198.19.0.20:80"))
		for _, a := range lbAddrs {
			rec.tryEndpoint(a, 4)
		}
		if _, err := z.pickEndpoint(snap, svc, nil, rec); err == nil {
			t.Fatal("picked an endpoint tried already")
		}
	})
}

// TestPickEndpointBackoffOver: an endpoint passed over is picked again once its
// backoff ended.
func TestPickEndpointBackoffOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		snap := lbSnapshot(t, nil)
		z := &Ztunnel{health: newEndpointHealth(time.Second, 30*time.Second)}
		svc := snap.ServiceByName("mesh", "lb")
		bad := lbAddrs["lb-b1"]
		z.health.failed(bad, reasonUpstream, time.Now())
		picks := func() (n int) {
			for range 8 {
				rec := newRecord(dirOutbound, ap("198.18.1.10:40000"), ap("198.19.0.20:80"))
				ep, err := z.pickEndpoint(snap, svc, nil, rec)
				if err != nil {
					t.Fatal(err)
				}
				if ep.Addr == bad {
					n++
				}
			}
			return n
		}
		if n := picks(); n != 0 {
			t.Fatalf("the failing endpoint was picked %d times in its backoff", n)
		}
		time.Sleep(time.Second)
		if n := picks(); n != 2 {
			t.Fatalf("the endpoint was picked %d of 8 times after its backoff, want its share, 2", n)
		}
	})
}
