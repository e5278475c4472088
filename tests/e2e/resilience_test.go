package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// Service "res" of the resilience tests: three endpoints on two nodes in two zones
// (local on node1, zone a; echo-a and echo-b on node2, zone b), bound to the waypoint
// in node3 (zone a). Healthy endpoints run Istio's echo server; a faulty one runs
// fortio's, whose answers (a status, a delay) are set per process.
const resPort = 8095

var resVIP = netip.AddrPortFrom(mesh.VIP(12), 80)

// resRule is the DestinationRule file of these tests.
const resRule = "res-rule.yaml"

// resNodes are the localities the tests give the nodes.
var resNodes = []mesh.Locality{{Region: "r1", Zone: "a"}, {Region: "r1", Zone: "b"}, {Region: "r1", Zone: "a"}}

// resMesh runs the waypoint with service res bound to it and returns its pod.
func resMesh(t *testing.T) *netns.Pod {
	t.Helper()
	saved := make([]mesh.Locality, len(m.Model.Nodes))
	for i := range m.Model.Nodes {
		saved[i] = m.Model.Nodes[i].Locality
	}
	t.Cleanup(func() {
		for i := range m.Model.Nodes {
			m.Model.Nodes[i].Locality = saved[i]
		}
		if err := m.Apply(); err != nil {
			t.Error(err)
		}
	}) // runs after runWaypoint's cleanup restored and applied the rest
	return runWaypoint(t, func(md *mesh.Model) {
		for i := range md.Nodes {
			md.Nodes[i].Locality = resNodes[i]
		}
		for _, name := range []string{"local", "echo-a", "echo-b"} {
			w := md.Workload(name)
			labels := map[string]string{"res": "yes"}
			for k, v := range w.Labels {
				labels[k] = v
			}
			w.Labels = labels
		}
		md.Services = append(md.Services, boundService("res", resVIP,
			mesh.ServicePort{Name: "http", TargetPort: resPort}, map[string]string{"res": "yes"}))
	})
}

// resPods are the endpoints' pods by workload name.
func resPods() map[string]*netns.Pod {
	return map[string]*netns.Pod{"local": local, "echo-a": echoA, "echo-b": echoB}
}

// resBackend is the server of one endpoint.
type resBackend struct {
	name string
	pod  *netns.Pod
	proc *netns.Proc
}

// startBackend serves res on pod name: Istio's echo server (version = the pod's name)
// when fault is empty, else fortio answering every request with fault (its default
// query, e.g. "status=503" or "delay=2s") and the header x-pod.
func startBackend(t *testing.T, name, fault string) *resBackend {
	t.Helper()
	p := resPods()[name]
	var cmd []string
	if fault == "" {
		bins, err := mesh.IstioEchoBinaries(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cmd = []string{bins.Server, "--port", fmt.Sprint(resPort), "--grpc", "7075", "--tcp", "9095", "--version", name}
	} else {
		f, err := mesh.FortioBinary(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cmd = []string{f, "server", "-http-port", fmt.Sprint(resPort), "-grpc-port", "disabled", "-redirect-port", "disabled",
			"-tcp-port", "disabled", "-udp-port", "disabled", "-echo-server-default-params", fault + "&header=x-pod:" + name}
	}
	proc, err := m.Topo.Start(p.Command(context.Background(), cmd[0], cmd[1:]...))
	if err != nil {
		t.Fatal(err)
	}
	b := &resBackend{name: name, pod: p, proc: proc}
	t.Cleanup(b.stop)
	// Up once it answers on its own address (from its own pod: not through the mesh).
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: p.DialContext, DisableKeepAlives: true}}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := c.Get(fmt.Sprintf("http://%s:%d/?ready=1", p.IP, resPort)) // a query: not fortio's fault
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s not serving: %v\n%s", name, err, proc.Output())
		}
	}
	return b
}

func (b *resBackend) stop() {
	if b.proc != nil {
		_ = b.proc.Stop()
		b.proc = nil
	}
}

// resBackends starts the three endpoints' servers, faults by name.
func resBackends(t *testing.T, faults map[string]string) map[string]*resBackend {
	t.Helper()
	out := map[string]*resBackend{}
	for name := range resPods() {
		out[name] = startBackend(t, name, faults[name])
	}
	return out
}

// resAnswer is one request's outcome through the waypoint.
type resAnswer struct {
	code int
	pod  string // the endpoint that answered
	took time.Duration
	err  error
}

// resClient sends the client pod's requests to res over one keep-alive connection.
func resClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: client.DialContext, MaxConnsPerHost: 1}}
}

func resGet(c *http.Client, path string) resAnswer {
	start := time.Now()
	resp, err := c.Get("http://" + resVIP.String() + path)
	if err != nil {
		return resAnswer{err: err, took: time.Since(start)}
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	a := resAnswer{code: resp.StatusCode, took: time.Since(start), pod: resp.Header.Get("X-Pod")}
	if i := strings.Index(string(body), "ServiceVersion="); i >= 0 {
		a.pod = strings.Fields(string(body[i+len("ServiceVersion="):]))[0]
	}
	return a
}

// tally counts answers by pod and by status.
type tally struct {
	byPod  map[string]int
	byCode map[int]int
	errors int
}

func count(as []resAnswer) tally {
	t := tally{byPod: map[string]int{}, byCode: map[int]int{}}
	for _, a := range as {
		if a.err != nil {
			t.errors++
			continue
		}
		t.byCode[a.code]++
		if a.pod != "" {
			t.byPod[a.pod]++
		}
	}
	return t
}

func (t tally) String() string {
	return fmt.Sprintf("by endpoint %v, by status %v, transport errors %d", t.byPod, t.byCode, t.errors)
}

// run sends n requests one after another.
func run(c *http.Client, n int, path string) []resAnswer {
	out := make([]resAnswer, n)
	for i := range out {
		out[i] = resGet(c, path)
	}
	return out
}

// applyRule waits until the waypoint's cluster for res has the defaults (the previous
// test's rule removed: its ejections gone), then writes the DestinationRule manifests
// (none: "") as file and waits until the cluster applies rule ("mesh/name").
func applyRule(t *testing.T, wpPod *netns.Pod, rule, manifests string) {
	t.Helper()
	waitRule(t, wpPod, "")
	if manifests != "" {
		m.ApplyPolicies(t, resRule, manifests)
		waitRule(t, wpPod, rule)
	}
}

func waitRule(t *testing.T, wpPod *netns.Pod, rule string) {
	t.Helper()
	c := resClient()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resGet(c, "/probe")
		if cl, err := resCluster(wpPod); err == nil && cl.Rule == rule {
			return
		}
		if time.Now().After(deadline) {
			cl, err := resCluster(wpPod)
			t.Fatalf("the waypoint's cluster for res applies %q, want %q (%v)", cl.Rule, rule, err)
		}
	}
}

// resCluster is the waypoint's cluster for res, from its /config_dump.
func resCluster(wpPod *netns.Pod) (upstream.ClusterStatus, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: wpPod.DialContext}}
	resp, err := c.Get("http://127.0.0.1:15000/config_dump")
	if err != nil {
		return upstream.ClusterStatus{}, err
	}
	defer resp.Body.Close()
	var d struct {
		Clusters []upstream.ClusterStatus `json:"clusters"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return upstream.ClusterStatus{}, err
	}
	for _, cl := range d.Clusters {
		if strings.HasSuffix(cl.Name, "|res.mesh.svc.cluster.local") {
			return cl, nil
		}
	}
	return upstream.ClusterStatus{}, fmt.Errorf("no cluster for res in %d clusters", len(d.Clusters))
}

// The waypoint's resilience against faults injected into real backends: outlier
// ejection, retries, timeouts, a killed endpoint, a partitioned one, overload,
// least-request against round robin, zone failover and return, gRPC spread.
func TestWaypointResilience(t *testing.T) {
	requireMesh(t)
	if _, err := mesh.FortioBinary(context.Background()); err != nil {
		t.Fatal(err)
	}
	wpPod := resMesh(t)

	t.Run("OutlierEjection", func(t *testing.T) {
		resBackends(t, map[string]string{"echo-b": "status=503"})
		applyRule(t, wpPod, "mesh/res", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: res, namespace: mesh}
spec:
  host: res
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: false}} # else outlier detection turns failover on: all in zone a
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}
`)
		c := resClient()
		first, rest := count(run(c, 30, "/")), count(run(c, 60, "/"))
		t.Logf("first 30 requests: %v; next 60: %v", first, rest)
		if rest.byCode[http.StatusOK] != 60 || rest.byPod["echo-b"] != 0 {
			t.Errorf("after ejection: %v, want all 60 answered 200 by the healthy endpoints", rest)
		}
		if n := first.byCode[http.StatusServiceUnavailable] + rest.byCode[http.StatusServiceUnavailable]; n > 3 {
			t.Errorf("%d requests got echo-b's 503, want at most 3 (consecutive5xxErrors)", n)
		}
		cl, err := resCluster(wpPod)
		if err != nil || cl.Outlier == nil || cl.Outlier.EjectionsActive != 1 {
			t.Fatalf("cluster %+v (%v): want one ejection active", cl, err)
		}
		for _, e := range cl.Endpoints {
			if e.Health == "ejected" && !strings.HasPrefix(e.Addr, echoB.IP.String()+":") {
				t.Errorf("ejected %s, want echo-b", e.Addr)
			}
		}
		if err := mesh.WaitOutput(m.Waypoint(wpPod.Name), "msg=\"endpoint ejected\"", echoB.IP.String()); err != nil {
			t.Error(err)
		}
	})

	t.Run("RetriesHide503", func(t *testing.T) {
		resBackends(t, map[string]string{"echo-b": "status=503"})
		applyRule(t, wpPod, "", "")
		writeResRoute(t, `    retry: {attempts: 2, codes: [503]}`)
		a := count(run(resClient(), 60, "/"))
		t.Logf("60 requests with retries of 503: %v", a)
		if a.byCode[http.StatusOK] != 60 {
			t.Errorf("%v: want every request answered 200 (echo-b's 503 retried on another endpoint)", a)
		}
		cl, _ := resCluster(wpPod)
		if cl.Breakers.RetriesTotal == 0 {
			t.Errorf("no retry counted: %+v", cl.Breakers)
		}
	})

	t.Run("Timeout504", func(t *testing.T) {
		resBackends(t, map[string]string{"echo-b": "delay=2s"})
		applyRule(t, wpPod, "", "")
		writeResRoute(t, `    timeouts: {request: 500ms}`)
		as := run(resClient(), 12, "/")
		var slow []time.Duration
		for _, a := range as {
			if a.code == http.StatusGatewayTimeout {
				slow = append(slow, a.took.Round(time.Millisecond))
			}
		}
		t.Logf("12 requests, echo-b delaying 2 s, route timeout 500 ms: %v; the 504s took %v", count(as), slow)
		if len(slow) == 0 {
			t.Fatalf("no 504: %v", count(as))
		}
		for _, d := range slow {
			if d < 450*time.Millisecond || d > 1500*time.Millisecond {
				t.Errorf("a 504 took %v, want about 500 ms", d)
			}
		}
		if err := mesh.WaitOutput(m.Waypoint(wpPod.Name), "response_code=504", "response_flags=UT"); err != nil {
			t.Error(err)
		}
	})

	t.Run("KilledMidRun", func(t *testing.T) {
		bs := resBackends(t, nil)
		applyRule(t, wpPod, "", "")
		c := resClient()
		before := run(c, 20, "/")
		bs["echo-a"].stop() // its pod now refuses: the waypoint retries the connect elsewhere
		after := count(run(c, 60, "/"))
		t.Logf("before the kill: %v; after: %v", count(before), after)
		if after.byCode[http.StatusOK] != 60 || after.byPod["echo-a"] != 0 {
			t.Errorf("after echo-a was killed: %v, want all 60 answered by the others (connect failures retried)", after)
		}
	})

	t.Run("PartitionDropsPackets", func(t *testing.T) {
		resBackends(t, nil)
		applyRule(t, wpPod, "mesh/res", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: res, namespace: mesh}
spec:
  host: res
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: false}}
    connectionPool: {tcp: {connectTimeout: 300ms}, http: {maxRequestsPerConnection: 1}}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}
`)
		// One request per upstream connection: a pooled one to echo-b would see the loss
		// as a stalled response, not a connect failure.
		partition(t, echoB)
		a := count(run(resClient(), 30, "/"))
		t.Logf("30 requests, echo-b's packets dropped: %v", a)
		if a.byCode[http.StatusOK] != 30 || a.byPod["echo-b"] != 0 {
			t.Errorf("%v: want every request answered by the others (the connect to echo-b times out and is retried)", a)
		}
		cl, err := resCluster(wpPod)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range cl.Endpoints {
			if strings.HasPrefix(e.Addr, echoB.IP.String()+":") && e.Health != "ejected" {
				t.Errorf("echo-b is %s after its connect timeouts, want ejected (local-origin failures count as 5xx)", e.Health)
			}
		}
	})

	t.Run("OverloadUO", func(t *testing.T) {
		resBackends(t, map[string]string{"local": "delay=200ms", "echo-a": "delay=200ms", "echo-b": "delay=200ms"})
		applyRule(t, wpPod, "mesh/res", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: res, namespace: mesh}
spec:
  host: res
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 4}}
`)
		var mu sync.Mutex
		var as []resAnswer
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				c := resClient()
				for range 4 {
					a := resGet(c, "/")
					mu.Lock()
					as = append(as, a)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		var overflow, ok []time.Duration
		for _, a := range as {
			switch a.code {
			case http.StatusServiceUnavailable:
				overflow = append(overflow, a.took)
			case http.StatusOK:
				ok = append(ok, a.took)
			}
		}
		slices.Sort(overflow)
		slices.Sort(ok)
		t.Logf("16 clients x 4 requests over http2MaxRequests 4: %v; median 503 %v, median 200 %v", count(as), median(overflow), median(ok))
		if len(overflow) == 0 || len(ok) < 4 {
			t.Fatalf("%v: want some answered 503 over the limit and the rest served", count(as))
		}
		if median(overflow) >= 200*time.Millisecond {
			t.Errorf("the 503s took %v (median): they must not wait for the backends (200 ms)", median(overflow))
		}
		if err := mesh.WaitOutput(m.Waypoint(wpPod.Name), "response_code=503", "response_flags=UO"); err != nil {
			t.Error(err)
		}
	})

	t.Run("LeastRequestAvoidsSlow", func(t *testing.T) {
		resBackends(t, map[string]string{"echo-b": "delay=100ms"})
		share := map[string]float64{}
		for _, lb := range []string{"ROUND_ROBIN", "LEAST_REQUEST"} {
			waitRule(t, wpPod, "")
			if err := m.WritePolicies(resRule, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: res, namespace: mesh}
spec:
  host: res
  trafficPolicy: {loadBalancer: {simple: %s}}
`, lb)); err != nil {
				t.Fatal(err)
			}
			waitRule(t, wpPod, "mesh/res")
			var mu sync.Mutex
			var as []resAnswer
			var wg sync.WaitGroup
			for range 6 {
				wg.Go(func() {
					got := run(resClient(), 25, "/")
					mu.Lock()
					as = append(as, got...)
					mu.Unlock()
				})
			}
			wg.Wait()
			a := count(as)
			share[lb] = float64(a.byPod["echo-b"]) / float64(len(as))
			t.Logf("%s, 6 clients x 25 requests, echo-b 100 ms slower: %v (echo-b's share %.2f)", lb, a, share[lb])
			if err := m.RemovePolicies(resRule); err != nil {
				t.Fatal(err)
			}
		}
		if share["LEAST_REQUEST"] >= share["ROUND_ROBIN"] {
			t.Errorf("the slow endpoint's share: LEAST_REQUEST %.2f, ROUND_ROBIN %.2f; want less with LEAST_REQUEST", share["LEAST_REQUEST"], share["ROUND_ROBIN"])
		}
	})

	t.Run("ZoneFailoverAndReturn", func(t *testing.T) {
		bs := resBackends(t, nil)
		applyRule(t, wpPod, "mesh/res", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: res, namespace: mesh}
spec:
  host: res
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}
`)
		c := resClient()
		home := count(run(c, 20, "/"))
		t.Logf("zone a healthy: %v", home)
		if home.byPod["local"] != 20 {
			t.Fatalf("%v: want all in the waypoint's zone (local)", home)
		}
		bs["local"].stop()
		bs["local"] = startBackend(t, "local", "status=503")
		away := count(run(c, 30, "/"))
		t.Logf("zone a failing: %v", away)
		if away.byPod["local"] > 2 || away.byPod["echo-a"]+away.byPod["echo-b"] < 28 {
			t.Errorf("%v: want zone b to take over after 2 errors", away)
		}
		bs["local"].stop()
		bs["local"] = startBackend(t, "local", "")
		var back tally
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if back = count(run(c, 10, "/")); back.byPod["local"] == 10 {
				break
			}
		}
		t.Logf("zone a recovered: %v", back)
		if back.byPod["local"] != 10 {
			t.Errorf("%v: want traffic back in zone a once local returned", back)
		}
	})

	t.Run("GRPCStreamsSpread", func(t *testing.T) {
		resBackends(t, nil)
		applyRule(t, wpPod, "", "")
		bins, err := mesh.IstioEchoBinaries(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		setResGRPC(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var out []byte
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(300 * time.Millisecond) {
			out, err = client.Command(ctx, bins.Client, fmt.Sprintf("grpc://%s:7075", resVIP.Addr()), "--count", "30").CombinedOutput()
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("istio echo client: %v\n%s", err, out)
		}
		seen := map[string]int{}
		for _, name := range []string{"local", "echo-a", "echo-b"} {
			seen[name] = strings.Count(string(out), "ServiceVersion="+name)
		}
		t.Logf("30 gRPC requests on one connection: by endpoint %v", seen)
		if n := len(slices.DeleteFunc(slices.Collect(mapValues(seen)), func(v int) bool { return v == 0 })); n < 2 {
			t.Errorf("gRPC requests of one connection reached %v, want at least two endpoints", seen)
		}
	})
}

func mapValues(m map[string]int) func(func(int) bool) {
	return func(yield func(int) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[len(ds)/2]
}

// writeResRoute attaches an HTTPRoute to res whose one rule carries extra (indented
// fields of the rule), and waits until the waypoint serves it.
func writeResRoute(t *testing.T, extra string) {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: res, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: res, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /route-probe}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: %d.probe}}]
  - backendRefs: [{name: res, port: 80}]
%s
`, time.Now().UnixNano(), extra)
	if err := m.WritePolicies("res-route.yaml", doc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeResRoute(t) })
	want := strings.Split(strings.SplitN(doc, "hostname: ", 2)[1], "}")[0]
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: client.DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := c.Get("http://" + resVIP.String() + "/route-probe")
		if err == nil {
			resp.Body.Close()
			if strings.Contains(resp.Header.Get("Location"), want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the waypoint does not serve the route of %s", want)
		}
	}
}

func removeResRoute(t *testing.T) {
	t.Helper()
	if err := m.RemovePolicies("res-route.yaml"); err != nil {
		t.Error(err)
	}
}

// setResGRPC gives res a gRPC port (7075, appProtocol grpc) for the test.
func setResGRPC(t *testing.T) {
	t.Helper()
	svc := m.Model.Service("mesh", "res")
	saved := slices.Clone(svc.Ports)
	svc.Ports = append(svc.Ports, mesh.ServicePort{Name: "grpc", Port: 7075, TargetPort: 7075})
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s := m.Model.Service("mesh", "res"); s != nil {
			s.Ports = saved
			_ = m.Apply()
		}
	})
}

// partition drops every packet arriving in pod p (nftables in its namespace) until
// the test ends: its node's ztunnel can no longer connect to it.
func partition(t *testing.T, p *netns.Pod) {
	t.Helper()
	nft := func(args ...string) {
		if out, err := p.Command(context.Background(), "nft", args...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v in %s: %v\n%s", args, p.Name, err, out)
		}
	}
	nft("add", "table", "inet", "partition")
	nft("add", "chain", "inet", "partition", "in", "{ type filter hook input priority 0; policy drop; }")
	t.Cleanup(func() { _ = p.Command(context.Background(), "nft", "delete", "table", "inet", "partition").Run() })
}
