package waypoint

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/waypoint/upstream"
)

// get sends GET path on the stream c (HTTP/1.1 keep-alive) with extra header lines.
func getOn(t *testing.T, c io.ReadWriter, br *bufio.Reader, path string, header ...string) (*http.Response, string) {
	t.Helper()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: echo.apps\r\n%s\r\n", path, strings.Join(append(header, ""), "\r\n"))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// clusterDump is the waypoint's /config_dump clusters.
func (h *harness) clusterDump(t *testing.T) []upstream.ClusterStatus {
	t.Helper()
	rec := httptest.NewRecorder()
	h.wp.configDump(rec, httptest.NewRequest("GET", "/config_dump", nil))
	var d struct {
		Clusters        []upstream.ClusterStatus `json:"clusters"`
		TrafficProblems []string                 `json:"trafficProblems"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	return d.Clusters
}

const outlierRule = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 10s
      baseEjectionTime: 1m
      maxEjectionPercent: 100
`

// An endpoint answering 503 is ejected after consecutive5xxErrors of them; the
// requests after that all reach the healthy one, and /config_dump says so.
func TestOutlierEjection(t *testing.T) {
	h := newHarness(t, outlierRule)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	var failed, lastFail int
	for i := range 40 {
		if resp, _ := getOn(t, c, br, "/fail-b"); resp.StatusCode == http.StatusServiceUnavailable {
			failed, lastFail = failed+1, i
		}
	}
	if failed != 3 {
		t.Errorf("%d requests failed, want 3 (consecutive5xxErrors, then echo-b ejected)", failed)
	}
	if lastFail > 30 {
		t.Errorf("a request failed as late as #%d: echo-b not ejected", lastFail)
	}
	cs := h.clusterDump(t)
	if len(cs) != 1 || cs[0].Outlier == nil || cs[0].Outlier.EjectionsActive != 1 {
		t.Fatalf("clusters %+v: want echo's, one endpoint ejected", cs)
	}
	for _, e := range cs[0].Endpoints {
		if want := map[bool]string{true: "ejected", false: "healthy"}[e.Addr == "198.18.2.11:8080"]; e.Health != want {
			t.Errorf("endpoint %s is %s, want %s", e.Addr, e.Health, want)
		}
	}
}

// An HTTPRoute retry of 503 hides one endpoint's failures: the retry goes to the
// other endpoint (never to the one that just failed).
func TestRetryOtherEndpoint(t *testing.T) {
	h := newHarness(t, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs: [{name: echo, port: 80}]
    retry: {attempts: 1, codes: [503], backoff: 1ms}
`)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for i := range 20 {
		if resp, body := getOn(t, c, br, "/fail-b"); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %q, want 200 (retried on echo-a)", i, resp.StatusCode, body)
		}
	}
	if cs := h.clusterDump(t); len(cs) != 1 || cs[0].Breakers.RetriesTotal == 0 {
		t.Errorf("clusters %+v: want retries counted", cs)
	}
}

// Over http2MaxRequests the request is answered 503 at once, flagged UO and counted,
// while the one in flight completes.
func TestCircuitBreakerOverflow(t *testing.T) {
	h := newHarness(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo.apps.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 1}
`)
	slow := h.mustConnect(t, "198.19.0.1:80")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if resp, _ := getOn(t, slow, bufio.NewReader(slow), "/slow"); resp.StatusCode != http.StatusOK {
			t.Errorf("the request within the limit: %d, want 200", resp.StatusCode)
		}
	}()
	// Wait for /slow to be in flight.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if cs := h.clusterDump(t); len(cs) == 1 && cs[0].Breakers.Requests == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow request never became active")
		}
	}
	c := h.mustConnect(t, "198.19.0.1:80")
	start := time.Now()
	resp, body := getOn(t, c, bufio.NewReader(c), "/p")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "overflow") {
		t.Errorf("over the limit: %d %q, want 503 upstream overflow", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("the overflow took %v: it must not wait for the slow request", d)
	}
	wg.Wait()
	if cs := h.clusterDump(t); cs[0].Breakers.RequestOverflows != 1 {
		t.Errorf("breakers %+v: want one request overflow", cs[0].Breakers)
	}
}

// A consistent hash on a cookie with a ttl: the waypoint sets the cookie, and the
// requests that carry it all reach one endpoint.
func TestConsistentHashCookie(t *testing.T) {
	h := newHarness(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: sticky, ttl: 60s, path: /}
`)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	resp, _ := getOn(t, c, br, "/p")
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "sticky" {
			cookie = ck
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.MaxAge != 60 {
		t.Fatalf("Set-Cookie %q: want sticky, HttpOnly, Max-Age 60", resp.Header.Values("Set-Cookie"))
	}
	seen := map[string]bool{}
	for range 20 {
		resp, body := getOn(t, c, br, "/p", "Cookie: sticky="+cookie.Value)
		if len(resp.Header.Values("Set-Cookie")) != 0 {
			t.Errorf("a request with the cookie got another: %q", resp.Header.Values("Set-Cookie"))
		}
		seen[strings.Fields(body)[0]] = true
	}
	if len(seen) != 1 {
		t.Errorf("requests with one cookie reached %v, want one endpoint", seen)
	}
}

// A DestinationRule with an invalid field is left out, named in /config_dump; the
// others apply.
func TestInvalidDestinationRule(t *testing.T) {
	h := newHarness(t, outlierRule, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: apps}
spec:
  host: shadow
  trafficPolicy:
    loadBalancer:
      consistentHash:
        maglev: {tableSize: 1000}
`)
	rec := httptest.NewRecorder()
	h.wp.configDump(rec, httptest.NewRequest("GET", "/config_dump", nil))
	if !strings.Contains(rec.Body.String(), "DestinationRule apps/bad") || !strings.Contains(rec.Body.String(), "tableSize") {
		t.Errorf("config_dump does not name the bad rule and its field:\n%s", rec.Body.String())
	}
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for range 10 {
		getOn(t, c, br, "/fail-b")
	}
	if cs := h.clusterDump(t); len(cs) != 1 || cs[0].Outlier == nil || cs[0].Rule != "apps/echo" {
		t.Errorf("clusters %+v: want echo's rule applied", cs)
	}
}

// A connect failure is retried on the other endpoint, unseen by the client; with every
// endpoint refusing, the answer is 503 UF,URX after Istio's two retries.
func TestConnectFailureRetried(t *testing.T) {
	// One request per upstream connection, so that every request connects.
	h := newHarness(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
`)
	h.backend.refuseFrom("198.18.2.11")
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for i := range 10 {
		if resp, body := getOn(t, c, br, "/p"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "198.18.2.10 ") {
			t.Fatalf("request %d: %d %q, want 200 from echo-a (echo-b refuses: retried)", i, resp.StatusCode, body)
		}
	}
	h.backend.refuseFrom("198.18.2.10", "198.18.2.11")
	resp, _ := getOn(t, c, br, "/p")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("every endpoint refusing: %d, want 503", resp.StatusCode)
	}
	var flags string
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if flags = h.lastFlags(); flags != "" {
			break
		}
	}
	if flags != "UF,URX" {
		t.Errorf("response_flags %q, want UF,URX", flags)
	}
}

// lastFlags is the response_flags label of the waypoint's 503 requests ("" for none).
func (h *harness) lastFlags() string {
	mfs, err := h.wp.reg.Gather()
	if err != nil {
		return ""
	}
	for _, mf := range mfs {
		if mf.GetName() != "istio_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var code, flags string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "response_code":
					code = l.GetValue()
				case "response_flags":
					flags = l.GetValue()
				}
			}
			if code == "503" {
				return flags
			}
		}
	}
	return ""
}

// A TCP stream is closed once no byte moved for the cluster's tcp.idleTimeout, and not
// while bytes flow.
func TestCloseWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &closeRecorder{}
		var sent, recv atomic.Int64
		stop := closeWhenIdle(time.Minute, &sent, &recv, c)
		defer stop()
		for range 5 {
			time.Sleep(50 * time.Second)
			recv.Add(1) // traffic within every minute
		}
		if c.closed.Load() {
			t.Fatal("closed while bytes flowed")
		}
		time.Sleep(2*time.Minute + time.Second)
		if !c.closed.Load() {
			t.Error("open after 2 idle minutes, want it closed")
		}
	})
}

// closeRecorder is a net.Conn that only records Close.
type closeRecorder struct {
	net.Conn
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return nil }

// maxRequestsPerConnection 3: every upstream connection carries at most 3 requests.
func TestMaxRequestsPerConnection(t *testing.T) {
	h := newHarness(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 3}}}
`)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for i := range 12 {
		if resp, body := getOn(t, c, br, "/p"); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	h.backend.mu.Lock()
	defer h.backend.mu.Unlock()
	if n := len(h.backend.connects); n < 4 {
		t.Errorf("12 requests took %d upstream connections, want at least 4 (3 requests each)", n)
	}
}

// Locality priorities start from the waypoint's own pod: all traffic to the endpoint
// in its zone, and, once its locality moves (a node relabelled), to the other one.
func TestLocalityFollowsTheWaypoint(t *testing.T) {
	rule := `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: true}}
    outlierDetection: {consecutive5xxErrors: 5}
`
	placed := func(zone string) func(*discovery.Input) {
		return func(in *discovery.Input) {
			for _, w := range in.Workloads {
				switch w.Name {
				case "wp-0":
					w.Locality = discovery.Locality{Region: "r", Zone: zone}
				case "echo-a":
					w.Locality = discovery.Locality{Region: "r", Zone: "a"}
				case "echo-b":
					w.Locality = discovery.Locality{Region: "r", Zone: "b"}
				}
			}
		}
	}
	h := newHarness(t, rule)
	c := h.mustConnect(t, "198.19.0.1:80")
	br := bufio.NewReader(c)
	for _, tc := range []struct{ zone, want string }{{"a", "198.18.2.10"}, {"b", "198.18.2.11"}} {
		h.store.Set(testModel(t, rule, placed(tc.zone)))
		for i := range 10 {
			if _, body := getOn(t, c, br, "/p"); !strings.HasPrefix(body, tc.want+" ") {
				t.Fatalf("waypoint in zone %s, request %d answered %q, want from %s (its zone)", tc.zone, i, body, tc.want)
			}
		}
	}
}
