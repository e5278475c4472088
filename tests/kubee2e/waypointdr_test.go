package kubee2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// Service res of TestKubeWaypointDestinationRule: HTTP on port 8082 of server (answers
// 200) and server2 (answers 503 while its fault is on: the endpoint to eject), bound to
// apps/waypoint from the start. Both name themselves in x-pod, so a 503 without it is the
// waypoint's own.
const (
	resPort = 8082
	resHost = "res." + appNS + ".svc.cluster.local"
	// slowFor holds /slow: long enough for a burst's requests to overlap at the waypoint.
	slowFor = 500 * time.Millisecond
)

var resVIP = netip.MustParseAddrPort("198.19.0.12:80")

// withRes serves res, all undone at cleanup, and returns server2's fault switch (on).
func withRes(t *testing.T) *atomic.Bool {
	t.Helper()
	fault := new(atomic.Bool)
	fault.Store(true)
	for _, b := range []struct {
		name   string
		pod    *netns.Pod
		faulty bool
	}{{"server", server, false}, {"server2", server2, true}} {
		l, err := b.pod.Listen("tcp", netip.AddrPortFrom(b.pod.IP, resPort).String())
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			rw.Header().Set("X-Pod", b.name)
			if b.faulty && fault.Load() {
				rw.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			if r.URL.Path == "/slow" {
				select {
				case <-time.After(slowFor):
				case <-r.Context().Done():
				}
			}
			fmt.Fprintf(rw, "pod=%s path=%s", b.name, r.URL.Path)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	createPodService(t, "res", resVIP, resPort, map[string]string{discovery.LabelUseWaypoint: waypointName})
	return fault
}

// resAnswer is one request's outcome; pod is empty for the waypoint's own answers.
type resAnswer struct {
	code int
	pod  string
	err  error
}

// resClient sends the client pod's requests to res over one keep-alive connection: the
// waypoint balances each request.
func resClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: client.DialContext, MaxConnsPerHost: 1}}
}

func resGet(c *http.Client, path string) resAnswer {
	resp, err := c.Get("http://" + resVIP.String() + path)
	if err != nil {
		return resAnswer{err: err}
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resAnswer{code: resp.StatusCode, pod: resp.Header.Get("X-Pod"), err: err}
}

// resRun sends n requests one after another.
func resRun(c *http.Client, n int) resTally {
	as := make([]resAnswer, n)
	for i := range as {
		as[i] = resGet(c, "/")
	}
	return tallyRes(as)
}

// resBurst sends n concurrent GET /slow, each on a connection of its own.
func resBurst(n int) resTally {
	as := make([]resAnswer, n)
	var wg sync.WaitGroup
	for i := range as {
		wg.Go(func() {
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: client.DialContext, DisableKeepAlives: true}}
			as[i] = resGet(c, "/slow")
		})
	}
	wg.Wait()
	return tallyRes(as)
}

// resTally counts answers by status, by answering pod ("waypoint" for its own) and
// transport errors.
type resTally struct {
	n      int
	byCode map[int]int
	byPod  map[string]int
	errors int
}

func tallyRes(as []resAnswer) resTally {
	t := resTally{n: len(as), byCode: map[int]int{}, byPod: map[string]int{}}
	for _, a := range as {
		if a.err != nil {
			t.errors++
			continue
		}
		t.byCode[a.code]++
		t.byPod[cmp.Or(a.pod, "waypoint")]++
	}
	return t
}

func (t resTally) String() string {
	return fmt.Sprintf("%d requests: by status %v, by answering pod %v, transport errors %d", t.n, t.byCode, t.byPod, t.errors)
}

// resDump is what the test reads of the waypoint's /config_dump: res's cluster (ok
// false before the waypoint forwarded to it) and the DestinationRules not applied.
type resDump struct {
	cluster  upstream.ClusterStatus
	ok       bool
	problems []string
}

func readResDump(wpPod *netns.Pod) (resDump, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: wpPod.DialContext}}
	resp, err := c.Get("http://127.0.0.1:15000/config_dump")
	if err != nil {
		return resDump{}, err
	}
	defer resp.Body.Close()
	var d struct {
		Clusters []upstream.ClusterStatus `json:"clusters"`
		Problems []string                 `json:"trafficProblems"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return resDump{}, fmt.Errorf("decode config_dump: %w", err)
	}
	out := resDump{problems: d.Problems}
	for _, cl := range d.Clusters {
		if strings.HasSuffix(cl.Name, "|"+resHost) {
			out.cluster, out.ok = cl, true
		}
	}
	return out, nil
}

// waitResCluster sends a probe (a model version reaches a cluster with its next request)
// and reads res's cluster until check accepts it, and returns it.
func waitResCluster(t *testing.T, wpPod *netns.Pod, c *http.Client, what string, check func(upstream.ClusterStatus) error) upstream.ClusterStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resGet(c, "/probe")
		d, err := readResDump(wpPod)
		if err == nil && !d.ok {
			err = fmt.Errorf("no cluster for %s", resHost)
		}
		if err == nil {
			if err = check(d.cluster); err == nil {
				return d.cluster
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v\n%s", what, err, m.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitResProblem waits until the waypoint's traffic problems name rule (want) or no
// longer do, and returns that problem.
func waitResProblem(t *testing.T, wpPod *netns.Pod, rule string, want bool) string {
	t.Helper()
	prefix := "DestinationRule " + rule + ":"
	deadline := time.Now().Add(20 * time.Second)
	for {
		d, err := readResDump(wpPod)
		i := slices.IndexFunc(d.problems, func(p string) bool { return strings.HasPrefix(p, prefix) })
		if err == nil && (i >= 0) == want {
			if i < 0 {
				return ""
			}
			return d.problems[i]
		}
		if time.Now().After(deadline) {
			t.Fatalf("traffic problems %q (%v): want %s named: %v", d.problems, err, rule, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// destinationRules is where the chart's CRD serves them.
var destinationRules = schema.GroupVersionResource{Group: discovery.NetworkingGroup, Version: "v1", Resource: "destinationrules"}

// applyDR creates (or, when it exists, replaces) the DestinationRule of manifest through
// the API server, deleted at cleanup. It is sent as written, as kubectl apply would: Istio's
// typed client marshals uint64 fields (maglev.tableSize) as JSON strings, which the CRD's
// integer schema refuses (istio/istio#41256). The manifest is decoded strictly first, to
// catch a typo in it.
func applyDR(t *testing.T, manifest string) {
	t.Helper()
	ctx := context.Background()
	dr, err := discovery.DecodeDestinationRule([]byte(manifest))
	if err != nil {
		t.Fatalf("%v\n%s", err, manifest)
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &obj.Object); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(m.Kube.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	drs := dyn.Resource(destinationRules).Namespace(dr.Namespace)
	cur, err := drs.Get(ctx, dr.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := drs.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := drs.Delete(ctx, dr.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Error(err)
			}
		})
	case err != nil:
		t.Fatal(err)
	default:
		obj.SetResourceVersion(cur.GetResourceVersion())
		if _, err := drs.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// deleteDR deletes DestinationRule apps/name.
func deleteDR(t *testing.T, ic istioclient.Interface, name string) {
	t.Helper()
	if err := ic.NetworkingV1().DestinationRules(appNS).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The waypoint in Kubernetes mode applies the DestinationRules it watches on the API
// server to the cluster of the Service port: outlier detection ejects the endpoint
// answering 503 (the following requests are all 200), an update of the rule (request
// breaker, load balancer) is applied live, deleting it brings back the defaults, and an
// invalid rule (older, so it would win the merge) is a problem left out whole.
func TestKubeWaypointDestinationRule(t *testing.T) {
	requireMesh(t)
	ctx := context.Background()
	ic, gc := istio(t), gatewayClient(t)
	fault := withRes(t)
	enroll(t)
	createWaypoint(t, gc)
	const sa = "waypoint-dr"
	bindClusterRole(t, sa)
	kubeconfig, err := m.WriteServiceAccountKubeconfig(ctx, appNS, sa)
	if err != nil {
		t.Fatal(err)
	}
	wpPod := startWaypointPod(t, sa, kubeconfig)
	waitServiceBound(t, "res", 1)
	wp := m.Waypoint(wpPod.Name)
	c := resClient()
	server2Addr := netip.AddrPortFrom(server2.IP, resPort).String()

	// No rule: the defaults (least request, no outlier detection, no breaker in
	// reach), so server2's 503s reach the client.
	defaults := func(cl upstream.ClusterStatus) error {
		if cl.Rule != "" || cl.Outlier != nil || cl.Algorithm != "LEAST_REQUEST" {
			return fmt.Errorf("cluster applies %q, lbPolicy %s, outlier detection %+v; want the defaults", cl.Rule, cl.Algorithm, cl.Outlier)
		}
		return nil
	}
	waitResCluster(t, wpPod, c, "the defaults", defaults)
	base := resRun(c, 20)
	t.Logf("no DestinationRule: %v", base)
	if base.byCode[http.StatusServiceUnavailable] == 0 || base.byPod["server"] == 0 || base.errors != 0 {
		t.Fatalf("%v: want both endpoints used and server2's 503s seen", base)
	}

	// Invalid: Maglev's table size must be prime. The API server's schema lets it
	// through (Istio's CRD only bounds it below) and it decodes, so the waypoint's
	// compile leaves it out (not the Kubernetes source's decode problem "left out: ...").
	applyDR(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad-maglev, namespace: apps}
spec:
  host: res
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1000}}}
`)
	prob := waitResProblem(t, wpPod, appNS+"/bad-maglev", true)
	t.Logf("invalid rule: %s", prob)
	if !strings.Contains(prob, "maglev.tableSize") || !strings.Contains(prob, "1000 is not prime") || strings.Contains(prob, "left out") {
		t.Errorf("problem %q: want the compile's error naming maglev.tableSize", prob)
	}
	if err := mesh.WaitOutput(wp, `msg="destination rule not applied"`, "DestinationRule "+appNS+"/bad-maglev", "1000 is not prime"); err != nil {
		t.Error(err)
	}
	waitResCluster(t, wpPod, c, "the defaults with the invalid rule left out", defaults)

	// The valid rule, younger than the invalid one (Istio merges same-host rules oldest
	// first: had the invalid one been kept, its Maglev would win). Fault off while it
	// arrives, so that the ejection is counted from the first request under it.
	fault.Store(false)
	applyDR(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: res, namespace: apps}
spec:
  host: res
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: false}} # else outlier detection turns locality failover on
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}
`)
	waitResCluster(t, wpPod, c, "the rule apps/res alone", func(cl upstream.ClusterStatus) error {
		if cl.Rule != appNS+"/res" || cl.Outlier == nil || cl.Algorithm != "LEAST_REQUEST" {
			return fmt.Errorf("cluster applies %q, lbPolicy %s, outlier detection %+v; want apps/res's", cl.Rule, cl.Algorithm, cl.Outlier)
		}
		return nil
	})
	fault.Store(true)
	first, rest := resRun(c, 20), resRun(c, 20)
	t.Logf("apps/res, server2 failing: first %v; then %v", first, rest)
	if n := first.byCode[http.StatusServiceUnavailable]; n == 0 || n > 2 {
		t.Errorf("%d of the first requests got server2's 503, want 1 or 2 (consecutive5xxErrors 2)", n)
	}
	if rest.byCode[http.StatusOK] != rest.n || rest.byPod["server"] != rest.n {
		t.Errorf("after the ejection: %v, want all answered 200 by server", rest)
	}
	d, err := readResDump(wpPod)
	if err != nil {
		t.Fatal(err)
	}
	if o := d.cluster.Outlier; o == nil || o.EjectionsActive != 1 || o.Consecutive5xx != 1 {
		t.Errorf("outlier detection %+v, want one consecutive-5xx ejection active", o)
	}
	for _, e := range d.cluster.Endpoints {
		if (e.Addr == server2Addr) != (e.Health == "ejected") {
			t.Errorf("endpoint %s is %s; want server2 (%s) alone ejected", e.Addr, e.Health, server2Addr)
		}
	}
	if err := mesh.WaitOutput(wp, `msg="endpoint ejected"`, "upstream="+server2Addr); err != nil {
		t.Error(err)
	}
	if b := resBurst(6); b.byCode[http.StatusOK] != b.n {
		t.Errorf("a burst under apps/res: %v, want every request admitted (no request limit yet)", b)
	}

	// Updated live: one request at a time and round robin; server2 stays ejected.
	applyDR(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: res, namespace: apps}
spec:
  host: res
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1}}
    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}
`)
	cl := waitResCluster(t, wpPod, c, "the updated apps/res", func(cl upstream.ClusterStatus) error {
		if cl.Rule != appNS+"/res" || cl.Algorithm != "ROUND_ROBIN" {
			return fmt.Errorf("cluster applies %q, lbPolicy %s; want apps/res with ROUND_ROBIN", cl.Rule, cl.Algorithm)
		}
		return nil
	})
	if cl.Outlier == nil || cl.Outlier.EjectionsActive != 1 {
		t.Errorf("outlier detection after the update %+v, want server2's ejection kept", cl.Outlier)
	}
	b := resBurst(6)
	d, err = readResDump(wpPod)
	if err != nil {
		t.Fatal(err)
	}
	overflows := d.cluster.Breakers.RequestOverflows - cl.Breakers.RequestOverflows
	t.Logf("6 concurrent requests, http2MaxRequests 1: %v; request overflows %d", b, overflows)
	uo := b.byPod["waypoint"]
	if uo == 0 || b.byCode[http.StatusOK] == 0 || b.byCode[http.StatusOK]+uo != b.n || b.byPod["server2"] != 0 {
		t.Errorf("%v: want some admitted (200 by server) and the others refused by the waypoint (503)", b)
	}
	if overflows != uint64(uo) {
		t.Errorf("request overflows counted %d, want %d (the waypoint's 503s)", overflows, uo)
	}
	if err := mesh.WaitOutput(wp, "msg=request", "response_code=503", "response_flags=UO"); err != nil {
		t.Error(err)
	}

	// Deleted: the defaults again (the invalid rule still left out), server2 back.
	deleteDR(t, ic, "res")
	waitResCluster(t, wpPod, c, "the defaults after the deletion", defaults)
	after := resRun(c, 20)
	t.Logf("apps/res deleted: %v", after)
	if after.byCode[http.StatusServiceUnavailable] == 0 || after.byPod["server2"] == 0 {
		t.Errorf("%v: want server2 back in use (its 503s seen)", after)
	}
	if b := resBurst(6); b.byPod["waypoint"] != 0 {
		t.Errorf("a burst after the deletion: %v, want no request refused by the waypoint", b)
	}
	waitResProblem(t, wpPod, appNS+"/bad-maglev", true)

	deleteDR(t, ic, "bad-maglev")
	waitResProblem(t, wpPod, appNS+"/bad-maglev", false)
}
