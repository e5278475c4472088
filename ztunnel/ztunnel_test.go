package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestConfigValidate(t *testing.T) {
	base := Config{NodeName: "node1", ModelPath: "/m.yaml"}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults ok", func(*Config) {}, ""},
		{"no node", func(c *Config) { c.NodeName = "" }, "node name"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "Bad Domain" }, "trust domain"},
		{"mark outside mask", func(c *Config) { c.Mark, c.MarkMask = 0x1400, 0xf00 }, "outside mask"},
		{"wildcard listener", func(c *Config) { c.OutboundAddr = netip.MustParseAddrPort("0.0.0.0:15001") }, "loopback"},
		{"negative hbone connections", func(c *Config) { c.HBONEConnsPerPeer = -1 }, "hbone connections per peer"},
		{"too many hbone connections", func(c *Config) { c.HBONEConnsPerPeer = 65 }, "want 1 to 64"},
		{"negative pool idle timeout", func(c *Config) { c.HBONEPoolIdleTimeout = -time.Second }, "hbone pool idle timeout -1s"},
		{"negative connect timeout", func(c *Config) { c.ConnectTimeout = -time.Second }, "connect timeout -1s"},
		{"too many connect attempts", func(c *Config) { c.ConnectAttempts = 9 }, "connect attempts 9: want 1 to 8"},
		{"negative connect attempts", func(c *Config) { c.ConnectAttempts = -1 }, "connect attempts -1"},
		{"negative endpoint backoff", func(c *Config) { c.EndpointBackoff = -time.Second }, "endpoint backoff -1s"},
		{"backoff cap below backoff", func(c *Config) { c.EndpointBackoff, c.EndpointBackoffMax = time.Minute, time.Second }, "endpoint backoff max 1s: below the endpoint backoff 1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.mutate(&c)
			err := c.WithDefaults().Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v, want one mentioning %q wrapping ErrConfig", err, tt.wantErr)
			}
		})
	}
}

func testSnapshot(t testing.TB) *discovery.Snapshot {
	t.Helper()
	return testSnapshotWith(t, nil)
}

// testSnapshotWith is testSnapshot with policies in force.
func testSnapshotWith(t testing.TB, policies *policy.Set) *discovery.Snapshot {
	t.Helper()
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	ip := netip.MustParseAddr
	snap, err := discovery.Build(discovery.Input{
		Namespaces: []*discovery.Namespace{{Name: "mesh", Labels: ambient}, {Name: "plain"}},
		Nodes: []*discovery.Node{
			{Name: "node1", Addresses: []netip.Addr{ip("198.18.0.1")}},
			{Name: "node2", Addresses: []netip.Addr{ip("198.18.0.2")}},
		},
		Workloads: []*discovery.Workload{
			{Name: "client", Namespace: "mesh", ServiceAccount: "client", Node: "node1", IPs: []netip.Addr{ip("198.18.1.10")}},
			{Name: "echo-a", Namespace: "mesh", ServiceAccount: "echo", Node: "node2", IPs: []netip.Addr{ip("198.18.2.10")}, Labels: map[string]string{"app": "echo"}},
			{Name: "echo-b", Namespace: "mesh", ServiceAccount: "echo", Node: "node2", IPs: []netip.Addr{ip("198.18.2.11")}, Labels: map[string]string{"app": "echo"}},
			{Name: "plain", Namespace: "plain", Node: "node2", IPs: []netip.Addr{ip("198.18.2.12")}},
			{Name: "client-2", Namespace: "mesh", ServiceAccount: "client", Node: "node2", IPs: []netip.Addr{ip("198.18.2.20")}},
		},
		Services: []*discovery.Service{{
			Name: "echo", Namespace: "mesh", VIPs: []netip.Addr{ip("198.19.0.10")},
			Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "echo"},
		}, {
			Name: "empty", Namespace: "mesh", VIPs: []netip.Addr{ip("198.19.0.11")},
			Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "nothing"},
		}},
		Policies: policies,
	}, discovery.EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestResolve(t *testing.T) {
	snap := testSnapshot(t)
	store := discovery.NewStore()
	store.Set(snap)
	z := &Ztunnel{cfg: Config{NodeName: "node1"}.WithDefaults(), store: store}
	ap := netip.MustParseAddrPort
	tests := []struct {
		name     string
		dst      string
		target   string
		mesh     bool
		workload string
		service  bool
		err      error
	}{
		{"pod ip in mesh", "198.18.2.10:8080", "198.18.2.10:8080", true, "echo-a", false, nil},
		{"pod ip outside mesh", "198.18.2.12:9000", "198.18.2.12:9000", false, "plain", false, nil},
		{"unknown destination", "198.18.9.9:443", "198.18.9.9:443", false, "", false, nil},
		{"service vip", "198.19.0.10:80", "", true, "", true, nil},
		{"service unknown port", "198.19.0.10:81", "", false, "", false, errUnknownPort},
		{"service without endpoints", "198.19.0.11:80", "", false, "", false, errNoEndpoint},
		{"own node address is passthrough", "198.18.0.1:22", "198.18.0.1:22", false, "", false, nil},
		{"loopback", "127.0.0.1:15001", "", false, "", false, errLoop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := z.resolve(snap, newRecord(dirOutbound, ap("198.18.1.10:40000"), ap(tt.dst)), nil)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.target != "" && r.target.String() != tt.target {
				t.Errorf("target %s, want %s", r.target, tt.target)
			}
			if r.mesh != tt.mesh {
				t.Errorf("mesh %v, want %v", r.mesh, tt.mesh)
			}
			if tt.workload != "" && (r.dstW == nil || r.dstW.Name != tt.workload) {
				t.Errorf("workload %v, want %s", r.dstW, tt.workload)
			}
			if tt.service != (r.svc != nil) {
				t.Errorf("service %v, want %v", r.svc, tt.service)
			}
		})
	}
}

func TestResolveServiceRoundRobin(t *testing.T) {
	snap := testSnapshot(t)
	store := discovery.NewStore()
	store.Set(snap)
	z := &Ztunnel{cfg: Config{NodeName: "node1"}.WithDefaults(), store: store}
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		r, err := z.resolve(snap, newRecord(dirOutbound, ap("198.18.1.10:40000"), ap("198.19.0.10:80")), nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.target.Port() != 8080 {
			t.Fatalf("target port %d, want the target port 8080", r.target.Port())
		}
		seen[r.dstW.Name]++
	}
	if seen["echo-a"] != 5 || seen["echo-b"] != 5 {
		t.Fatalf("round robin spread %v, want 5/5", seen)
	}
}

// heldSource is an identity.Source whose certificate is held, arrives after a fetch
// (the first call that waits gets it), or never comes.
type heldSource struct {
	identity.Source
	state string // "held", "fetching", "refused"
	calls []bool // per call: whether ctx had ended
}

func (s *heldSource) Certificate(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	s.calls = append(s.calls, ctx.Err() != nil)
	switch {
	case s.state == "held", s.state == "fetching" && ctx.Err() == nil:
		return &tls.Certificate{}, nil
	case s.state == "fetching":
		return nil, ctx.Err()
	}
	return nil, identity.ErrNotAuthorized
}

func TestIdentityHeld(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/client")
	tests := []struct {
		state     string
		wantErr   error
		wantCalls []bool // ended ctx per call
	}{
		{"held", nil, []bool{true}}, // answered without a timeout context
		{"fetching", nil, []bool{true, false}},
		{"refused", identity.ErrNotAuthorized, []bool{true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.state, func(t *testing.T) {
			src := &heldSource{state: tt.state}
			z := &Ztunnel{ident: src}
			err := z.identityHeld(id)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(src.calls, tt.wantCalls) {
				t.Errorf("calls (ctx ended) = %v, want %v", src.calls, tt.wantCalls)
			}
		})
	}
}
