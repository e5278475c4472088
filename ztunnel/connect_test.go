package ztunnel

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
)

// retrySnapshot is lbSnapshot with service "retry" (198.19.0.30:80 -> 8080) whose
// endpoints are the named workloads of lbSnapshot, in that order.
func retrySnapshot(tb testing.TB, endpoints []string, mutate func(*discovery.Input)) *discovery.Snapshot {
	tb.Helper()
	return lbSnapshot(tb, func(in *discovery.Input) {
		svc := &discovery.Service{Name: "retry", Namespace: "mesh", VIPs: []netip.Addr{ip("198.19.0.30")},
			Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}}
		for _, name := range endpoints {
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{WorkloadUID: "mesh/" + name, Addr: lbAddrs[name]})
		}
		in.Services = append(in.Services, svc)
		if mutate != nil {
			mutate(in)
		}
	})
}

func lbID(name string) spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/" + name)
}

// hboneTo and directTo are the dials of an attempt on lbSnapshot's endpoint name: to
// its ztunnel over HBONE, or (lb-a1, on this node) to the pod from the client's address.
func hboneTo(name string) dialCall {
	return dialCall{kind: "hbone", target: netip.AddrPortFrom(lbAddrs[name], PortHBONE).String()}
}

func directTo(name string) dialCall {
	return dialCall{kind: "transparent", bind: ip("198.18.1.10"), target: netip.AddrPortFrom(lbAddrs[name], 8080).String()}
}

var (
	errRefusedConn = fmt.Errorf("dial tcp: %w", syscall.ECONNREFUSED)
	status503      = &hbone.StatusError{Code: http.StatusServiceUnavailable}
	status401      = &hbone.StatusError{Code: http.StatusUnauthorized}
)

// TestConnectRetry: a connection to a service whose endpoint does not connect tries
// another (route runs again: the new endpoint's identity is expected, its policy and
// waypoint binding checked), replays what the client sent, logs the attempts, counts
// the failure and remembers the endpoint as failing; only connect failures are retried.
func TestConnectRetry(t *testing.T) {
	type failure struct{ key, endpoint, reason string }
	tests := []struct {
		name      string
		endpoints []string
		mutate    func(*discovery.Input)
		fail      map[string]error // testNode.fail
		deny      bool             // the authorizer denies
		wantDials []dialCall
		// wantPod is the endpoint the connection is relayed to; "" when refused, with
		// wantReason in the refusal.
		wantPod    string
		wantReason string
		wantFails  []failure // endpoint and reason of each failed attempt
		wantUF     bool      // refused because no endpoint connected
	}{
		{name: "hbone dial fails", endpoints: []string{"lb-b1", "lb-b2"},
			fail:      map[string]error{"198.18.2.21:15008": errRefusedConn},
			wantDials: []dialCall{hboneTo("lb-b1"), hboneTo("lb-b2")}, wantPod: "lb-b2",
			wantFails: []failure{{endpoint: "lb-b1", reason: reasonHBONE}}},
		{name: "peer answers 503", endpoints: []string{"lb-b1", "lb-b2"},
			fail:      map[string]error{"answer 198.18.2.21:8080": status503},
			wantDials: []dialCall{hboneTo("lb-b1"), hboneTo("lb-b2")}, wantPod: "lb-b2",
			wantFails: []failure{{endpoint: "lb-b1", reason: reasonUpstream}}},
		{name: "local endpoint refuses, remote takes it", endpoints: []string{"lb-a1", "lb-b1"},
			fail:      map[string]error{"198.18.1.21:8080": errRefusedConn},
			wantDials: []dialCall{directTo("lb-a1"), hboneTo("lb-b1")}, wantPod: "lb-b1",
			wantFails: []failure{{endpoint: "lb-a1", reason: reasonRefused}}},
		{name: "remote fails, local takes it", endpoints: []string{"lb-b1", "lb-a1"},
			fail:      map[string]error{"answer 198.18.2.21:8080": status503},
			wantDials: []dialCall{hboneTo("lb-b1"), directTo("lb-a1")}, wantPod: "lb-a1",
			wantFails: []failure{{endpoint: "lb-b1", reason: reasonUpstream}}},
		{name: "every endpoint fails", endpoints: []string{"lb-b1", "lb-b2"},
			fail:      map[string]error{"answer 198.18.2.21:8080": status503, "answer 198.18.2.22:8080": status503},
			wantDials: []dialCall{hboneTo("lb-b1"), hboneTo("lb-b2")}, wantReason: "status 503", wantUF: true,
			wantFails: []failure{{endpoint: "lb-b1", reason: reasonUpstream}, {endpoint: "lb-b2", reason: reasonUpstream}}},
		{name: "at most three attempts", endpoints: []string{"lb-b1", "lb-b2", "lb-a2", "lb-a1"},
			fail:      map[string]error{"198.18.2.21:15008": errRefusedConn, "198.18.2.22:15008": errRefusedConn, "198.18.3.21:15008": errRefusedConn},
			wantDials: []dialCall{hboneTo("lb-b1"), hboneTo("lb-b2"), hboneTo("lb-a2")}, wantReason: "connection refused", wantUF: true,
			wantFails: []failure{{endpoint: "lb-b1", reason: reasonHBONE}, {endpoint: "lb-b2", reason: reasonHBONE}, {endpoint: "lb-a2", reason: reasonHBONE}}},
		{name: "denial by the peer is not retried", endpoints: []string{"lb-b1", "lb-b2"},
			fail:      map[string]error{"answer 198.18.2.21:8080": status401},
			wantDials: []dialCall{hboneTo("lb-b1")}, wantReason: "status 401"},
		{name: "retry to a local endpoint asks its policy", endpoints: []string{"lb-b1", "lb-a1"}, deny: true,
			fail:      map[string]error{"answer 198.18.2.21:8080": status503},
			wantDials: []dialCall{hboneTo("lb-b1")}, wantReason: errDenyAll.Error(),
			wantFails: []failure{{endpoint: "lb-b1", reason: reasonUpstream}}},
		{name: "retry to a local endpoint checks its waypoint binding", endpoints: []string{"lb-b1", "lb-a1"},
			mutate: func(in *discovery.Input) {
				in.Waypoints = []*discovery.Waypoint{{Name: "wpw", Namespace: "mesh", For: discovery.WaypointForWorkload}}
				in.Workloads = append(in.Workloads, &discovery.Workload{Name: "wpw-1", Namespace: "mesh", ServiceAccount: "wpw",
					Node: "node2", IPs: []netip.Addr{ip("198.18.2.30")}, Labels: map[string]string{discovery.LabelGatewayName: "wpw"}})
				for _, w := range in.Workloads {
					if w.Name == "lb-a1" {
						w.Labels = map[string]string{discovery.LabelUseWaypoint: "wpw"}
					}
				}
			},
			fail:      map[string]error{"answer 198.18.2.21:8080": status503},
			wantDials: []dialCall{hboneTo("lb-b1")}, wantReason: errBehindWaypoint.Error(),
			wantFails: []failure{{endpoint: "lb-b1", reason: reasonUpstream}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newTestNodeWith(t, "node1", retrySnapshot(t, tt.endpoints, tt.mutate))
			for k, err := range tt.fail {
				n.failing(k, err)
			}
			authz := &authorizerLog{deny: tt.deny}
			n.authorize = authz.authorize
			c, client := clientConn(t, "198.18.1.10:40000", "198.19.0.30:80")
			// Sent before ztunnel reads: it goes with the first attempt, and again with
			// each further one.
			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { n.handleOutbound(context.Background(), c); close(done) }()

			if tt.wantPod != "" {
				pod := n.pod(t)
				got := make([]byte, 4)
				if _, err := io.ReadFull(pod, got); err != nil || string(got) != "ping" {
					t.Fatalf("%s read %q, %v", tt.wantPod, got, err)
				}
				pod.Write([]byte("pong"))
				pod.Close()
				client.CloseWrite()
				if b, err := io.ReadAll(client); err != nil || string(b) != "pong" {
					t.Fatalf("client read %q, %v", b, err)
				}
			} else if !readsEOF(client) {
				t.Fatal("the connection was not refused")
			}
			<-done

			var got []dialCall
			for _, d := range n.dialed() {
				got = append(got, dialCall{kind: d.kind, bind: d.bind, target: d.target})
			}
			// Each attempt goes round robin among the endpoints not tried yet: the order
			// of more than two is the cursor's.
			byTarget := func(a, b dialCall) int { return strings.Compare(a.target, b.target) }
			sorted := slices.SortedFunc(slices.Values(got), byTarget)
			if !slices.Equal(sorted, slices.SortedFunc(slices.Values(tt.wantDials), byTarget)) ||
				(tt.wantPod != "" && got[len(got)-1] != tt.wantDials[len(tt.wantDials)-1]) {
				t.Fatalf("dialed %+v, want %+v", got, tt.wantDials)
			}
			if tt.wantPod != "" && tt.wantDials[len(tt.wantDials)-1].kind == "hbone" {
				// The retry expects the identity of the endpoint it goes to.
				if req := n.dialed()[len(tt.wantDials)-1].req; req.Dst != lbID(tt.wantPod) ||
					req.Authority != netip.AddrPortFrom(lbAddrs[tt.wantPod], 8080).String() {
					t.Errorf("request to %s: %+v", tt.wantPod, req)
				}
			}

			var parts []string
			if tt.wantPod != "" {
				parts = []string{`msg="connection closed"`, "dst.workload=" + tt.wantPod, "bytes_sent=4", "bytes_recv=4"}
			} else {
				parts = []string{`msg="connection refused"`, tt.wantReason}
			}
			reasons := map[string]string{}
			for _, f := range tt.wantFails {
				reasons[lbAddrs[f.endpoint].String()] = f.reason
			}
			var failed []string
			for _, d := range got {
				a := netip.MustParseAddrPort(d.target).Addr()
				if r, ok := reasons[a.String()]; ok {
					failed = append(failed, netip.AddrPortFrom(a, 8080).String()+" "+r)
				}
			}
			if len(tt.wantDials) > 1 {
				parts = append(parts, fmt.Sprintf("connect_attempts=%d", len(tt.wantDials)),
					fmt.Sprintf("connect_failures=%q", strings.Join(failed, ", ")))
			}
			n.waitLog(t, parts...)

			var wantBad, gotBad []string
			for _, f := range tt.wantFails {
				wantBad = append(wantBad, lbAddrs[f.endpoint].String())
				labels := []string{f.endpoint, "mesh", "retry.mesh.svc.cluster.local", f.reason}
				if v := counterValue(t, n.m.connectFails.WithLabelValues(labels...)); v != 1 {
					t.Errorf("ambit_endpoint_connect_failures_total%v = %v, want 1", labels, v)
				}
			}
			for _, h := range n.health.dump(time.Now()) {
				if h.Failures != 1 || h.Healthy {
					t.Errorf("endpoint health %+v, want one failure, in backoff", h)
				}
				gotBad = append(gotBad, h.Address)
			}
			slices.Sort(wantBad)
			if !slices.Equal(gotBad, wantBad) {
				t.Errorf("failing endpoints %v, want %v", gotBad, wantBad)
			}
			wantUF := 0.0
			if tt.wantUF {
				wantUF = 1
			}
			if v := sumCounters(t, n, "istio_tcp_connections_failed_total", "response_flags", "UF"); v != wantUF {
				t.Errorf("istio_tcp_connections_failed_total{response_flags=UF} = %v, want %v", v, wantUF)
			}
			if tt.deny {
				if got := authz.asked(); !slices.Equal(got, []direction{dirLocal}) {
					t.Errorf("authorizer asked for %v, want once for the local endpoint", got)
				}
			}
		})
	}
}

// sumCounters sums the counters of family name whose label has value.
func sumCounters(tb testing.TB, n *testNode, name, label, value string) float64 {
	tb.Helper()
	fams, err := n.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// TestConnectReplaysPending: what the client sends while an endpoint's answer is
// pending flows to it at once, and goes again to the next endpoint if it refuses; the
// endpoint that takes the connection gets every byte once.
func TestConnectReplaysPending(t *testing.T) {
	for _, refuse := range []bool{true, false} {
		t.Run(fmt.Sprintf("refused=%v", refuse), func(t *testing.T) {
			n := newTestNodeWith(t, "node1", retrySnapshot(t, []string{"lb-b1", "lb-b2"}, nil))
			gate := n.gate("198.18.2.21:8080")
			c, client := clientConn(t, "198.18.1.10:40000", "198.19.0.30:80")
			client.Write([]byte("one."))
			done := make(chan struct{})
			go func() { n.handleOutbound(context.Background(), c); close(done) }()
			first := n.pod(t) // lb-b1's, unanswered
			readN := func(p io.Reader, want string) {
				t.Helper()
				got := make([]byte, len(want))
				if _, err := io.ReadFull(p, got); err != nil || string(got) != want {
					t.Fatalf("read %q, %v; want %q", got, err, want)
				}
			}
			readN(first, "one.")
			client.Write([]byte("two."))
			readN(first, "two.") // passed on before the answer
			pod := first
			if refuse {
				gate <- status503
				pod = n.pod(t)
				readN(pod, "one.two.")
			} else {
				gate <- nil
			}
			client.Write([]byte("three."))
			readN(pod, "three.")
			pod.Write([]byte("pong"))
			pod.Close()
			client.CloseWrite()
			if b, err := io.ReadAll(client); err != nil || string(b) != "pong" {
				t.Fatalf("client read %q, %v", b, err)
			}
			<-done
			n.waitLog(t, `msg="connection closed"`, "bytes_sent=14", "bytes_recv=4")
		})
	}
}

// TestConnectSkipsFailing: once an endpoint failed, the next connections go to the
// others without trying it.
func TestConnectSkipsFailing(t *testing.T) {
	n := newTestNodeWith(t, "node1", retrySnapshot(t, []string{"lb-b1", "lb-b2"}, nil))
	n.failing("answer 198.18.2.21:8080", status503)
	for i := range 5 {
		c, client := clientConn(t, "198.18.1.10:40000", "198.19.0.30:80")
		done := make(chan struct{})
		go func() { n.handleOutbound(context.Background(), c); close(done) }()
		pod := n.pod(t)
		pod.Close()
		if !readsEOF(client) {
			t.Fatalf("connection %d not relayed", i)
		}
		client.Close()
		<-done
	}
	var toFailing int
	for _, d := range n.dialed() {
		if d.target == "198.18.2.21:15008" {
			toFailing++
		}
	}
	if toFailing != 1 || len(n.dialed()) != 6 {
		t.Fatalf("dialed %d times, %d of them the failing endpoint; want 6 and 1", len(n.dialed()), toFailing)
	}
	d := n.health.dump(time.Now())
	if len(d) != 1 || d[0].Address != "198.18.2.21" || d[0].Failures != 1 || d[0].Reason != reasonUpstream {
		t.Fatalf("endpoint health %+v", d)
	}
	// /config_dump's keys.
	b, err := json.Marshal(ConfigDump{EndpointHealth: d})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		EndpointHealth []map[string]any `json:"endpointHealth"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if e := got.EndpointHealth; len(e) != 1 || e[0]["address"] != "198.18.2.21" || e[0]["failures"] != 1.0 ||
		e[0]["reason"] != reasonUpstream || e[0]["healthy"] != false || e[0]["unhealthyUntil"] == nil {
		t.Fatalf("endpointHealth in /config_dump: %s", b)
	}
}

func TestFailureReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w 1.2.3.4:80 via 1.2.3.4:15008: %w", errHBONEDial, errRefusedConn), reasonHBONE},
		{fmt.Errorf("%w 1.2.3.4:80 via 1.2.3.4:15008: %w", errHBONEDial, context.DeadlineExceeded), reasonTimeout},
		{fmt.Errorf("hbone connect: %w", status503), reasonUpstream},
		{fmt.Errorf("hbone connect: %w", status401), ""},
		{fmt.Errorf("dial pod: %w", errRefusedConn), reasonRefused},
		{fmt.Errorf("dial pod: %w", syscall.EHOSTUNREACH), reasonUnreachable},
		{fmt.Errorf("dial pod: %w", syscall.ETIMEDOUT), reasonTimeout},
		{fmt.Errorf("x: %w", errPeerLimit), ""},
		{fmt.Errorf("%w: reset", errClientGone), ""},
		{routeRefusal{errDenyAll}, ""},
		{context.Canceled, ""},
		{fmt.Errorf("dial pod: %w", syscall.EPERM), reasonOther},
	}
	for _, tt := range tests {
		if got := failureReason(tt.err); got != tt.want {
			t.Errorf("failureReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
