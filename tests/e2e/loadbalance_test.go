package e2e

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// lbService adds service name (vip:80 -> port) whose endpoints are pods, each serving
// echo on port, in the locality given (the client's is clientLoc); tests stop and start
// those servers. It returns the servers by workload name; Cleanup restores the model, and waits until node1's ztunnel has forgotten
// every failing endpoint (a success clears one once its backoff ended), so that no
// other test meets the memory this one left.
func lbService(t *testing.T, name string, vip netip.Addr, port uint16, trafficDistribution string,
	pods map[*netns.Pod]mesh.Locality, clientLoc mesh.Locality) map[string]*restartableEcho {
	t.Helper()
	saved := *m.Model
	saved.Workloads = append([]mesh.Workload(nil), m.Model.Workloads...)
	saved.Services = append([]mesh.Service(nil), m.Model.Services...)
	servers := map[string]*restartableEcho{}
	key := "lb-" + name
	for i := range m.Model.Workloads {
		w := &m.Model.Workloads[i]
		for p, loc := range pods {
			if w.IPs[0] != p.IP {
				continue
			}
			labels := map[string]string{key: "yes"}
			for k, v := range w.Labels {
				labels[k] = v
			}
			w.Labels, w.Locality = labels, loc
			servers[w.Name] = startEcho(t, p, port)
		}
	}
	m.Model.Workload("client").Locality = clientLoc
	m.Model.Services = append(m.Model.Services, mesh.Service{
		Name: name, Namespace: "mesh", VIPs: []netip.Addr{vip},
		Ports: []mesh.ServicePort{{Port: 80, TargetPort: port}}, Selector: map[string]string{key: "yes"},
		TrafficDistribution: trafficDistribution,
	})
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(vip, 80)
	t.Cleanup(func() {
		for _, s := range servers {
			s.start(t)
		}
		// Connections through the service clear the endpoints it left failing.
		deadline := time.Now().Add(40 * time.Second)
		for len(failingEndpoints(t)) > 0 && time.Now().Before(deadline) {
			_ = mesh.Echo(context.Background(), client, addr)
			time.Sleep(200 * time.Millisecond)
		}
		if f := failingEndpoints(t); len(f) > 0 {
			t.Errorf("node1 still remembers failing endpoints %v", f)
		}
		*m.Model = saved
		if err := m.Apply(); err != nil {
			t.Error(err)
		}
		for _, s := range servers {
			s.stop()
		}
	})
	waitEndpoints(t, name+".mesh.svc.cluster.local", len(pods))
	return servers
}

// restartableEcho is an echo server a test can stop (its pod then refuses
// connections) and start again on the same address.
type restartableEcho struct {
	pod  *netns.Pod
	addr string
	srv  *netns.EchoServer
}

func startEcho(t *testing.T, p *netns.Pod, port uint16) *restartableEcho {
	t.Helper()
	e := &restartableEcho{pod: p, addr: netip.AddrPortFrom(p.IP, port).String()}
	e.start(t)
	return e
}

func (e *restartableEcho) start(t *testing.T) {
	t.Helper()
	if e.srv != nil {
		return
	}
	srv, err := e.pod.StartEcho(e.addr)
	if err != nil {
		t.Fatalf("echo on %s: %v", e.addr, err)
	}
	e.srv = srv
}

func (e *restartableEcho) stop() {
	if e.srv != nil {
		e.srv.Close()
		e.srv = nil
	}
}

func (e *restartableEcho) peers() int {
	if e.srv == nil {
		return 0
	}
	return len(e.srv.Peers())
}

// waitEndpoints waits until node1's ztunnel has service hostname with n endpoints.
func waitEndpoints(t *testing.T, hostname string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := m.Dump(context.Background(), m.Topo.Nodes[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range d.Services {
			if s.Hostname == hostname && len(s.Endpoints) == n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node1 has no service %s with %d endpoints: %+v", hostname, n, d.Services)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failingEndpoints are the endpoints node1's ztunnel passes over (/config_dump).
func failingEndpoints(t *testing.T) map[string]int {
	t.Helper()
	d, err := m.Dump(context.Background(), m.Topo.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range d.EndpointHealth {
		out[e.Address] = e.Failures
	}
	return out
}

// connectFailures sums node1's ambit_endpoint_connect_failures_total of workload.
func connectFailures(t *testing.T, workload string) float64 {
	t.Helper()
	metrics, err := m.Metrics(context.Background(), m.Topo.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, "ambit_endpoint_connect_failures_total{") ||
			!strings.Contains(line, `destination_workload="`+workload+`"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// maxFailures is how many connect failures an endpoint that stays dead may have in
// elapsed with ztunnel's default backoff (1s, doubling): the first, then one each time
// its backoff ends (after 1s, 3s, 7s, ...).
func maxFailures(elapsed time.Duration) int {
	return 1 + int(math.Log2(elapsed.Seconds()+1))
}

// TestServiceSkipsDeadEndpoint: a Service with three endpoints on two nodes, one of
// whose servers is stopped (its pod refuses connections). Every connection to the
// service succeeds: the one that meets the dead endpoint is retried on another, and
// the next ones pass it over (it fails again only when its backoff ends).
func TestServiceSkipsDeadEndpoint(t *testing.T) {
	requireMesh(t)
	tests := []struct {
		name   string
		dead   func() *netns.Pod
		reason string
	}{
		{"remote endpoint refuses", func() *netns.Pod { return echoB }, "upstream_503"}, // node2's ztunnel answers 503
		{"same-node endpoint refuses", func() *netns.Pod { return local }, "refused"},
	}
	vip := mesh.VIP(7)
	servers := lbService(t, "lb", vip, 9090, "", map[*netns.Pod]mesh.Locality{local: {}, echoA: {}, echoB: {}}, mesh.Locality{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dead := tt.dead()
			name := deadName(dead)
			for _, s := range servers {
				s.start(t)
			}
			before := connectFailures(t, name)
			logsBefore := strings.Count(m.Ztunnel("node1").Output(), "connect_failures=")
			servers[name].stop()
			const n = 12
			start := time.Now()
			for i := range n {
				if err := mesh.Echo(context.Background(), client, netip.AddrPortFrom(vip, 80)); err != nil {
					t.Fatalf("connection %d: %v\n%s", i, err, m.Logs())
				}
			}
			elapsed := time.Since(start)
			failures := int(connectFailures(t, name) - before)
			if failures < 1 || failures > maxFailures(elapsed) {
				t.Fatalf("%s failed %d times in %d connections over %s; want 1 to %d (passed over after its first failure)\n%s",
					name, failures, n, elapsed, maxFailures(elapsed), m.Logs())
			}
			deadAddr := netip.AddrPortFrom(dead.IP, 9090).String()
			if err := m.WaitLog("node1", `msg="connection closed"`, "connect_attempts=2",
				"connect_failures=\""+deadAddr+" "+tt.reason+"\"", "dst.service=lb.mesh.svc.cluster.local"); err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(m.Ztunnel("node1").Output(), "connect_failures=") - logsBefore; got != failures {
				t.Errorf("%d access-log lines with connect failures, want one per failure (%d)", got, failures)
			}
			if f := failingEndpoints(t)[dead.IP.String()]; f < 1 {
				t.Errorf("/config_dump of node1 does not list %s as failing: %v", dead.IP, failingEndpoints(t))
			}
		})
	}
}

// deadName is the model's name of pod p.
func deadName(p *netns.Pod) string {
	for _, w := range m.Model.Workloads {
		if w.IPs[0] == p.IP {
			return w.Name
		}
	}
	panic(fmt.Sprintf("no workload for pod %s", p.Name))
}

// TestServicePreferClose: a PreferClose Service with endpoints in two zones. A client
// in zone a reaches only the zone-a endpoints while any of them serves; once they are
// all stopped, zone b's.
func TestServicePreferClose(t *testing.T) {
	requireMesh(t)
	// The file source learns these fields separately; until then there is nothing to run.
	probe := "workloads:\n  - {name: w, namespace: default, node: n, ips: [198.18.9.1], locality: {region: r, zone: a}}\n" +
		"services:\n  - {name: s, namespace: default, vips: [198.19.9.1], ports: [{port: 80}], trafficDistribution: PreferClose}\n"
	if _, err := discovery.Parse("probe.yaml", []byte(probe), discovery.EnrollmentOptions{}); err != nil {
		if !strings.Contains(err.Error(), "unknown field") {
			t.Fatalf("probe model: %v", err)
		}
		t.Skipf("the mesh model file does not take locality and trafficDistribution yet: %v", err)
	}
	a := mesh.Locality{Region: "r1", Zone: "a"}
	b := mesh.Locality{Region: "r1", Zone: "b"}
	vip := mesh.VIP(8)
	addr := netip.AddrPortFrom(vip, 80)
	// local (node1) and echo-a (node2, declared in zone a) are close to the client.
	servers := lbService(t, "near", vip, 9091, discovery.TrafficDistributionPreferClose,
		map[*netns.Pod]mesh.Locality{local: a, echoA: a, echoB: b}, a)
	const n = 12
	for i := range n {
		if err := mesh.Echo(context.Background(), client, addr); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if got := servers["echo-b"].peers(); got != 0 {
		t.Fatalf("zone b's endpoint took %d of %d connections while zone a's served", got, n)
	}
	for _, name := range []string{"local", "echo-a"} {
		if servers[name].peers() == 0 {
			t.Errorf("zone-a endpoint %s took no connection", name)
		}
	}
	servers["local"].stop()
	servers["echo-a"].stop()
	for i := range n {
		if err := mesh.Echo(context.Background(), client, addr); err != nil {
			t.Fatalf("connection %d with zone a down: %v\n%s", i, err, m.Logs())
		}
	}
	if got := servers["echo-b"].peers(); got != n {
		t.Fatalf("zone b's endpoint took %d of %d connections with zone a down", got, n)
	}
}
