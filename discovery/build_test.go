package discovery

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func mustBuild(tb testing.TB, in Input, opts EnrollmentOptions) *Snapshot {
	tb.Helper()
	s, err := Build(in, opts)
	if err != nil {
		tb.Fatalf("Build: %v", err)
	}
	return s
}

func TestEnrollmentOptionsWithDefaults(t *testing.T) {
	got := EnrollmentOptions{}.WithDefaults()
	want := EnrollmentOptions{"istio.io/dataplane-mode", "ambient", "istio.io/dataplane-mode", "none"}
	if got != want {
		t.Errorf("WithDefaults() = %+v, want %+v", got, want)
	}
	custom := EnrollmentOptions{NamespaceLabel: "mesh", EnrollValue: "on", PodLabel: "mesh-pod", OptOutValue: "off"}
	if got := custom.WithDefaults(); got != custom {
		t.Errorf("WithDefaults() changed set fields: %+v", got)
	}
}

func TestEnrollment(t *testing.T) {
	custom := EnrollmentOptions{NamespaceLabel: "example.com/mesh", EnrollValue: "yes", PodLabel: "example.com/skip", OptOutValue: "true"}
	tests := []struct {
		name      string
		opts      EnrollmentOptions
		nsLabels  map[string]string // nil: namespace not declared
		podLabels map[string]string
		want      bool
	}{
		{"namespace labelled ambient", EnrollmentOptions{}, map[string]string{"istio.io/dataplane-mode": "ambient"}, nil, true},
		{"namespace unlabelled", EnrollmentOptions{}, map[string]string{}, nil, false},
		{"namespace not declared", EnrollmentOptions{}, nil, nil, false},
		{"namespace other value", EnrollmentOptions{}, map[string]string{"istio.io/dataplane-mode": "sidecar"}, nil, false},
		{"pod opts out", EnrollmentOptions{}, map[string]string{"istio.io/dataplane-mode": "ambient"}, map[string]string{"istio.io/dataplane-mode": "none"}, false},
		{"pod other value stays enrolled", EnrollmentOptions{}, map[string]string{"istio.io/dataplane-mode": "ambient"}, map[string]string{"istio.io/dataplane-mode": "x"}, true},
		{"pod opts in alone", EnrollmentOptions{}, map[string]string{}, map[string]string{"istio.io/dataplane-mode": "ambient"}, true},
		{"custom namespace label", custom, map[string]string{"example.com/mesh": "yes"}, nil, true},
		{"custom namespace label, default key ignored", custom, map[string]string{"istio.io/dataplane-mode": "ambient"}, nil, false},
		{"custom pod opt-out", custom, map[string]string{"example.com/mesh": "yes"}, map[string]string{"example.com/skip": "true"}, false},
		{"custom pod opt-out, default key ignored", custom, map[string]string{"example.com/mesh": "yes"}, map[string]string{"istio.io/dataplane-mode": "none"}, true},
		{"custom values on default keys", EnrollmentOptions{EnrollValue: "mesh", OptOutValue: "off"}, map[string]string{"istio.io/dataplane-mode": "mesh"}, map[string]string{"app": "x"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Workloads: []*Workload{{Name: "w", Namespace: "ns", IPs: addrs("198.18.1.1"), Labels: tc.podLabels}}}
			if tc.nsLabels != nil {
				in.Namespaces = []*Namespace{{Name: "ns", Labels: tc.nsLabels}}
			}
			w := mustBuild(t, in, tc.opts).WorkloadByUID("ns/w")
			wantProto := ProtocolTCP
			if tc.want {
				wantProto = ProtocolHBONE
			}
			if w.Enrolled != tc.want || w.Protocol != wantProto {
				t.Errorf("Enrolled, Protocol = %v, %v; want %v, %v", w.Enrolled, w.Protocol, tc.want, wantProto)
			}
		})
	}
}

func TestServiceEndpoints(t *testing.T) {
	in := Input{
		Workloads: []*Workload{
			{Name: "a", Namespace: "ns", IPs: addrs("198.18.1.1", "fd00::1"), Labels: map[string]string{"app": "echo", "v": "1"}},
			{Name: "b", Namespace: "ns", IPs: addrs("198.18.1.2"), Labels: map[string]string{"app": "echo", "v": "2"}},
			{Name: "no-ip", Namespace: "ns", Labels: map[string]string{"app": "echo"}},
			{Name: "other-ns", Namespace: "other", IPs: addrs("198.18.1.3"), Labels: map[string]string{"app": "echo"}},
			{Name: "other-app", Namespace: "ns", IPs: addrs("198.18.1.4"), Labels: map[string]string{"app": "web"}},
		},
	}
	tests := []struct {
		name     string
		selector map[string]string
		explicit []Endpoint
		want     string
	}{
		{"selector matches same namespace, first IP", map[string]string{"app": "echo"}, nil, "[{ns/a 198.18.1.1} {ns/b 198.18.1.2}]"},
		{"all selector entries must match", map[string]string{"app": "echo", "v": "2"}, nil, "[{ns/b 198.18.1.2}]"},
		{"no selector selects nothing", nil, nil, "[]"},
		{"selector matching nothing", map[string]string{"app": "nope"}, nil, "[]"},
		{"explicit first, duplicates dropped", map[string]string{"app": "echo"},
			[]Endpoint{{WorkloadUID: "ns/b"}, {WorkloadUID: "ns/a", Addr: netip.MustParseAddr("fd00::1")}, {Addr: netip.MustParseAddr("198.18.9.9")}},
			"[{ns/b 198.18.1.2} {ns/a fd00::1} { 198.18.9.9} {ns/a 198.18.1.1}]"},
		{"explicit endpoint in another namespace", nil, []Endpoint{{WorkloadUID: "other/other-ns"}}, "[{other/other-ns 198.18.1.3}]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := in
			in.Services = []*Service{{Name: "s", Namespace: "ns", Selector: tc.selector, Endpoints: tc.explicit}}
			s := mustBuild(t, in, EnrollmentOptions{})
			if got := fmt.Sprint(s.Services[0].Endpoints); got != tc.want {
				t.Errorf("endpoints = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestLookups(t *testing.T) {
	s := mustBuild(t, Input{
		Nodes: []*Node{{Name: "n1", Addresses: addrs("198.18.0.1")}, {Name: "n2", Addresses: addrs("fd00::2")}},
		Workloads: []*Workload{
			{Name: "a", Namespace: "ns", Node: "n1", IPs: addrs("198.18.1.1", "fd00:1::1")},
			{Name: "b", Namespace: "ns", Node: "n2", IPs: addrs("::ffff:198.18.1.2"), UID: "uid-b"},
			{Name: "c", Namespace: "ns", Node: "n1"},
		},
		Namespaces: []*Namespace{{Name: "ns"}},
		Services: []*Service{{Name: "s", Namespace: "ns", VIPs: addrs("198.19.0.1", "fd00:19::1"),
			Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Port: 443}}}},
	}, EnrollmentOptions{})

	wl := func(w *Workload) string {
		if w == nil {
			return "<nil>"
		}
		return w.UID
	}
	for _, tc := range []struct{ ip, want string }{
		{"198.18.1.1", "ns/a"}, {"fd00:1::1", "ns/a"}, {"198.18.1.2", "uid-b"},
		{"::ffff:198.18.1.1", "ns/a"}, {"198.18.1.9", "<nil>"}, {"198.19.0.1", "<nil>"},
	} {
		if got := wl(s.WorkloadByIP(netip.MustParseAddr(tc.ip))); got != tc.want {
			t.Errorf("WorkloadByIP(%s) = %s, want %s", tc.ip, got, tc.want)
		}
	}
	if got := wl(s.WorkloadByUID("uid-b")); got != "uid-b" {
		t.Errorf("WorkloadByUID(uid-b) = %s", got)
	}
	if got := wl(s.WorkloadByUID("ns/b")); got != "<nil>" {
		t.Errorf("WorkloadByUID(ns/b) = %s, want <nil> (uid was given)", got)
	}

	for _, tc := range []struct {
		ip       string
		port     uint16
		svc      bool
		wantPort string
	}{
		{"198.19.0.1", 80, true, "{http 80 8080  }"},
		{"fd00:19::1", 443, true, "{ 443 443  }"},
		{"::ffff:198.19.0.1", 443, true, "{ 443 443  }"},
		{"198.19.0.1", 81, true, ""},
		{"198.19.0.2", 80, false, ""},
		{"198.18.1.1", 80, false, ""},
	} {
		svc, port := s.ServiceByVIP(netip.MustParseAddr(tc.ip), tc.port)
		if (svc != nil) != tc.svc {
			t.Errorf("ServiceByVIP(%s, %d) service = %v, want found=%v", tc.ip, tc.port, svc, tc.svc)
		}
		gotPort := ""
		if port != nil {
			gotPort = fmt.Sprint(*port)
		}
		if gotPort != tc.wantPort {
			t.Errorf("ServiceByVIP(%s, %d) port = %q, want %q", tc.ip, tc.port, gotPort, tc.wantPort)
		}
	}

	var onN1 []string
	for _, w := range s.WorkloadsOnNode("n1") {
		onN1 = append(onN1, w.Name)
	}
	if got := strings.Join(onN1, ","); got != "a,c" {
		t.Errorf("WorkloadsOnNode(n1) = %s, want a,c", got)
	}
	if got := s.WorkloadsOnNode("n9"); len(got) != 0 {
		t.Errorf("WorkloadsOnNode(n9) = %v, want none", got)
	}
	if n := s.Node("n2"); n == nil || n.Name != "n2" {
		t.Errorf("Node(n2) = %v", n)
	}
	if n := s.Node("n9"); n != nil {
		t.Errorf("Node(n9) = %v, want nil", n)
	}
	if n := s.NodeByIP(netip.MustParseAddr("198.18.0.1")); n == nil || n.Name != "n1" {
		t.Errorf("NodeByIP(198.18.0.1) = %v", n)
	}
	if n := s.NodeByIP(netip.MustParseAddr("198.18.0.9")); n != nil {
		t.Errorf("NodeByIP(198.18.0.9) = %v, want nil", n)
	}
	if s.ServiceByName("ns", "s") == nil || s.ServiceByHostname("s.ns.svc.cluster.local") == nil || s.Namespace("ns") == nil {
		t.Error("ServiceByName, ServiceByHostname or Namespace missed")
	}

	var nilSnap *Snapshot
	if nilSnap.WorkloadByIP(netip.MustParseAddr("198.18.1.1")) != nil || nilSnap.Node("n1") != nil {
		t.Error("nil snapshot lookups must return nil")
	}
	if svc, p := nilSnap.ServiceByVIP(netip.MustParseAddr("198.19.0.1"), 80); svc != nil || p != nil {
		t.Error("nil snapshot ServiceByVIP must return nil, nil")
	}
}

// Build reports errors by Input path and names both sides of a conflict,
// which is what a source without file positions (Kubernetes) shows.
func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name string
		in   Input
		want []string
	}{
		{"duplicate IP names both workloads", Input{Workloads: []*Workload{
			{Name: "a", Namespace: "ns", IPs: addrs("198.18.1.1")},
			{Name: "b", Namespace: "ns", IPs: addrs("198.18.1.1")},
		}}, []string{"workloads[1].ips[0]: 198.18.1.1 of workload ns/b is already used by workload ns/a (workloads[0].ips[0])"}},
		{"duplicate VIP names both services", Input{Services: []*Service{
			{Name: "a", Namespace: "ns", VIPs: addrs("198.19.0.1")},
			{Name: "b", Namespace: "ns", VIPs: addrs("::ffff:198.19.0.1")},
		}}, []string{"services[1].vips[0]: 198.19.0.1 of service ns/b is already used by service ns/a (services[0].vips[0])"}},
		{"a node listing an address twice", Input{Nodes: []*Node{
			{Name: "n1", Addresses: addrs("198.18.0.1", "198.18.0.1")},
		}}, []string{"nodes[0].addresses[1]: 198.18.0.1 is listed twice (nodes[0].addresses[0])"}},
		{"nil entries and invalid addresses", Input{
			Workloads:  []*Workload{nil, {Name: "a", Namespace: "ns", IPs: []netip.Addr{{}}}},
			Services:   []*Service{nil, {Name: "s", Namespace: "ns", Ports: []ServicePort{{Port: 0}}}},
			Namespaces: []*Namespace{nil},
			Nodes:      []*Node{nil},
		}, []string{
			"namespaces[0]: must not be nil",
			"nodes[0]: must not be nil",
			"workloads[0]: must not be nil",
			"workloads[1].ips[0]: not a valid IP address",
			"services[0]: must not be nil",
			"services[1].ports[0].port: 0 is not a valid port (1-65535)",
		}},
		{"duplicate hostname", Input{Services: []*Service{
			{Name: "a", Namespace: "ns", Hostname: "x.example.com"},
			{Name: "b", Namespace: "ns", Hostname: "x.example.com"},
		}}, []string{`services[1].hostname: hostname "x.example.com" of service ns/b is already used by service ns/a (services[0].hostname)`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.in, EnrollmentOptions{})
			if err == nil {
				t.Fatal("Build succeeded")
			}
			if got, want := err.Error(), strings.Join(tc.want, "\n"); got != want {
				t.Errorf("errors:\n got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestBuildCopiesInput(t *testing.T) {
	w := &Workload{Name: "a", Namespace: "ns", IPs: addrs("::ffff:198.18.1.1"), Labels: map[string]string{"app": "x"}}
	svc := &Service{Name: "s", Namespace: "ns", Ports: []ServicePort{{Port: 80}}, Selector: map[string]string{"app": "x"}}
	in := Input{Workloads: []*Workload{w}, Services: []*Service{svc}}
	s := mustBuild(t, in, EnrollmentOptions{})
	if w.UID != "" || w.Protocol != "" || svc.Hostname != "" || svc.Ports[0].TargetPort != 0 || svc.Endpoints != nil {
		t.Error("Build modified its input")
	}
	w.Labels["app"] = "changed"
	w.IPs[0] = netip.MustParseAddr("198.18.9.9")
	svc.Ports[0].Port = 81
	got := s.WorkloadByUID("ns/a")
	if got.Labels["app"] != "x" || got.IPs[0] != netip.MustParseAddr("198.18.1.1") || s.Services[0].Ports[0].Port != 80 {
		t.Error("snapshot shares memory with its input")
	}
}
