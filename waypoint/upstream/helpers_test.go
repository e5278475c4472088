package upstream

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/discovery"
)

// decodeDRs decodes the DestinationRules of a multi-document YAML text.
func decodeDRs(tb testing.TB, text string) []*networkingv1.DestinationRule {
	tb.Helper()
	var out []*networkingv1.DestinationRule
	for _, doc := range strings.Split("\n"+text, "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		dr := &networkingv1.DestinationRule{}
		if err := yaml.Unmarshal([]byte(doc), dr); err != nil {
			tb.Fatalf("decode DestinationRule: %v\n%s", err, doc)
		}
		out = append(out, dr)
	}
	return out
}

// mustCompile compiles text and fails on any error.
func mustCompile(tb testing.TB, text string, opts Options) *Policies {
	tb.Helper()
	p, probs := Compile(decodeDRs(tb, text), opts)
	for _, err := range probs.Errors {
		tb.Errorf("unexpected error: %v", err)
	}
	return p
}

// seeded is a deterministic random source (not safe for concurrent use).
func seeded(seed uint64) func() uint64 {
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).Uint64
}

// newCluster returns a cluster closed at the end of the test.
func newCluster(tb testing.TB, cfg ClusterConfig, obs Observer, eps ...Endpoint) *Cluster {
	tb.Helper()
	if cfg.Rand == nil {
		cfg.Rand = seeded(1)
	}
	c := NewCluster(cfg, obs)
	tb.Cleanup(c.Close)
	c.Update(nil, eps)
	return c
}

// endpoints returns n endpoints 10.0.0.1:80, 10.0.0.2:80, ...
func endpoints(n int) []Endpoint {
	out := make([]Endpoint, n)
	for i := range out {
		out[i] = Endpoint{Addr: addr(i), ID: fmt.Sprintf("default/pod-%d", i)}
	}
	return out
}

func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i%250 + 1)}), 80)
}

// at returns the endpoints with their localities ("region/zone/subzone").
func at(eps []Endpoint, localities ...string) []Endpoint {
	for i := range eps {
		eps[i].Locality = loc(localities[i])
	}
	return eps
}

func loc(s string) discovery.Locality {
	p := strings.SplitN(s, "/", 3)
	var l discovery.Locality
	l.Region = p[0]
	if len(p) > 1 {
		l.Zone = p[1]
	}
	if len(p) > 2 {
		l.Subzone = p[2]
	}
	return l
}

// counts picks n times and counts the hosts' addresses.
func counts(tb testing.TB, c *Cluster, n int, req func(i int) PickRequest) map[netip.AddrPort]int {
	tb.Helper()
	out := map[netip.AddrPort]int{}
	for i := range n {
		r := PickRequest{}
		if req != nil {
			r = req(i)
		}
		h, err := c.Pick(r)
		if err != nil {
			tb.Fatalf("pick %d: %v", i, err)
		}
		out[h.Addr()]++
	}
	return out
}

// hostOf returns the cluster's host with address a.
func hostOf(tb testing.TB, c *Cluster, a netip.AddrPort) *Host {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.hosts[a]
	if h == nil {
		tb.Fatalf("no host %v", a)
	}
	return h
}

// results ends n requests on h with r.
func results(h *Host, r Result, n int) {
	for range n {
		h.Start()(r)
	}
}

// recorder is an Observer keeping its events.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) ClusterEvent(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) kinds(k EventKind) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, e := range r.events {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

func ejectedAddrs(c *Cluster) []string {
	var out []string
	for _, e := range c.Snapshot().Endpoints {
		if e.Health == "ejected" {
			out = append(out, e.Addr)
		}
	}
	return out
}
