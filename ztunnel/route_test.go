package ztunnel

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
)

// arrival is a connection as an entry point's transport describes it.
type arrival struct {
	dir        direction
	src, dst   string
	peer       spiffeid.ID // inbound HBONE
	tunnelDst  string      // inbound HBONE: where the tunnel was sent
	forwarded  string      // inbound HBONE
	wantDir    direction
	want       decision
	wantErr    error
	wantSrc    string
	wantSrcW   string
	wantDstW   string
	wantSrcID  spiffeid.ID
	wantDstID  spiffeid.ID
	wantSvc    string
	wantMTLS   bool
	wantHBONE  string
	wantOrig   string
	wantStatus int
	wantReason string // the refusal's whole text
	// wantWaypoint is the waypoint gone through (outbound) or come from (inbound)
	wantWaypoint string
}

func (a arrival) record() *record {
	if a.dir == dirInboundHBONE {
		var fwd netip.AddrPort
		if a.forwarded != "" {
			fwd = netip.MustParseAddrPort(a.forwarded)
		}
		return hboneRecord(a.peer, ap(a.src), ap(a.tunnelDst), ap(a.dst), fwd)
	}
	return newRecord(a.dir, ap(a.src), ap(a.dst))
}

func ip(s string) netip.Addr     { return netip.MustParseAddr(s) }
func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func deliver(target, bind string) decision {
	d := decision{action: actDeliver, target: ap(target)}
	if bind != "" {
		d.bind = ip(bind)
	}
	return d
}

// TestRoute: the one decision point, for each entry point and the cases that decide
// where a connection goes, and what the record then says.
func TestRoute(t *testing.T) {
	tests := []struct {
		name string
		node string
		a    arrival
	}{
		{"outbound to a pod on another node", "node1", arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.18.2.10:8080",
			want:     decision{action: actHBONE, target: ap("198.18.2.10:8080"), peer: ap("198.18.2.10:15008")},
			wantSrcW: "mesh/client", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho, wantMTLS: true,
			wantHBONE: "198.18.2.10:15008",
		}},
		{"outbound to a service", "node1", arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.19.0.10:80",
			want:     decision{action: actHBONE, target: ap("198.18.2.10:8080"), peer: ap("198.18.2.10:15008")},
			wantSrcW: "mesh/client", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho, wantMTLS: true,
			wantSvc: "echo.mesh.svc.cluster.local", wantHBONE: "198.18.2.10:15008", wantOrig: "198.19.0.10:80",
		}},
		{"outbound passthrough to a pod outside the mesh", "node1", arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.18.2.12:9000",
			want:     decision{action: actPassthrough, target: ap("198.18.2.12:9000")},
			wantSrcW: "mesh/client", wantDstW: "plain/plain", wantSrcID: idClient,
		}},
		{"outbound passthrough out of the mesh", "node1", arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.18.9.9:443",
			want:     decision{action: actPassthrough, target: ap("198.18.9.9:443")},
			wantSrcW: "mesh/client", wantSrcID: idClient,
		}},
		{"outbound from a pod not of this node", "node2", arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "198.18.2.10:8080", wantErr: errNotLocalSource,
		}},
		{"outbound loop", "node1", arrival{
			dir: dirOutbound, src: "198.18.1.10:40000", dst: "127.0.0.1:15001", wantErr: errLoop,
			wantSrcW: "mesh/client", wantSrcID: idClient,
		}},
		{"same node", "node2", arrival{
			dir: dirOutbound, src: "198.18.2.20:40000", dst: "198.18.2.10:8080", wantDir: dirLocal,
			want:     deliver("198.18.2.10:8080", "198.18.2.20"),
			wantSrcW: "mesh/client-2", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho, wantMTLS: true,
		}},
		{"inbound HBONE from the owner of the forwarded address", "node2", arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.10:8080", peer: idClient,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.1.10:40000",
			want:    deliver("198.18.2.10:8080", "198.18.1.10"),
			wantSrc: "198.18.1.10:40000", wantSrcW: "mesh/client", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"inbound HBONE with a forged forwarded address", "node2", arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.10:8080", peer: idClient,
			tunnelDst: "198.18.2.10:15008", forwarded: "198.18.2.11:40000", // echo-b's, not the client's
			want:    deliver("198.18.2.10:8080", ""),
			wantSrc: "198.18.0.1:50000", wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho,
			wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"inbound HBONE whose authority is another pod", "node2", arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.11:8080", peer: idClient,
			tunnelDst: "198.18.2.10:15008", wantErr: errAuthorityMatch, wantStatus: http.StatusBadRequest,
			wantDstW: "mesh/echo-a", wantSrcID: idClient, wantDstID: idEcho, wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"inbound HBONE to a pod not of this node", "node1", arrival{
			dir: dirInboundHBONE, src: "198.18.0.1:50000", dst: "198.18.2.10:8080", peer: idClient,
			tunnelDst: "198.18.2.10:15008", wantErr: errNotLocalDest, wantStatus: http.StatusBadRequest,
			wantSrcID: idClient, wantMTLS: true, wantHBONE: "198.18.2.10:15008",
		}},
		{"inbound plaintext", "node2", arrival{
			dir: dirInboundPlain, src: "198.18.2.12:5000", dst: "198.18.2.10:8080",
			want:     deliver("198.18.2.10:8080", "198.18.2.12"),
			wantSrcW: "plain/plain", wantDstW: "mesh/echo-a", wantDstID: idEcho,
		}},
		{"inbound plaintext to a pod outside the mesh", "node2", arrival{
			dir: dirInboundPlain, src: "198.18.9.9:5000", dst: "198.18.2.12:9000", wantErr: errNotLocalDest,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRoute(t, newTestNode(t, tt.node), tt.a)
		})
	}
}

// checkRoute routes a's connection on n and checks the decision and the record.
func checkRoute(t *testing.T, n *testNode, a arrival) {
	t.Helper()
	rec := a.record()
	d := n.route(n.store.Load(), rec)
	if a.wantErr != nil {
		if d.action != actRefuse || !errors.Is(d.reason, a.wantErr) {
			t.Fatalf("decision %+v, want a refusal for %v", d, a.wantErr)
		}
		if a.wantStatus != 0 && d.status != a.wantStatus {
			t.Errorf("status %d, want %d", d.status, a.wantStatus)
		}
		if a.wantReason != "" && d.reason.Error() != a.wantReason {
			t.Errorf("reason %q, want %q", d.reason, a.wantReason)
		}
	} else if d != a.want {
		t.Fatalf("decision %+v, want %+v", d, a.want)
	}
	wantDir := a.dir
	if a.wantDir != 0 {
		wantDir = a.wantDir
	}
	wantSrc, wantOrig := a.src, a.dst
	if a.wantSrc != "" {
		wantSrc = a.wantSrc
	}
	if a.wantOrig != "" {
		wantOrig = a.wantOrig
	}
	for _, c := range []struct {
		field     string
		got, want any
	}{
		{"direction", rec.Direction, wantDir},
		{"src", rec.Src.String(), wantSrc},
		{"original dst", rec.OrigDst.String(), wantOrig},
		{"src workload", rec.SrcWorkload.String(), a.wantSrcW},
		{"dst workload", rec.DstWorkload.String(), a.wantDstW},
		{"src identity", rec.SrcID, a.wantSrcID},
		{"dst identity", rec.DstID, a.wantDstID},
		{"service", rec.Service.Hostname, a.wantSvc},
		{"mutual TLS", rec.MutualTLS, a.wantMTLS},
		{"hbone address", addrOrEmpty(rec.HBONEAddr), a.wantHBONE},
		{"waypoint", rec.Waypoint, a.wantWaypoint},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}
	if a.wantErr == nil && rec.Dst != d.target {
		t.Errorf("record's dst %s, decision's target %s", rec.Dst, d.target)
	}
}

func addrOrEmpty(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// errDenyAll is the test authorizer's verdict.
var errDenyAll = errors.New("denied by the test authorizer")

// authorizerLog records what the authorizer was asked, and denies or allows all.
type authorizerLog struct {
	deny bool
	mu   sync.Mutex
	seen []direction
}

func (l *authorizerLog) authorize(_ *discovery.Snapshot, rec *record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, rec.Direction)
	if rec.DstWorkload.Name == "" || rec.DstID.IsZero() {
		return errors.New("asked before the destination was resolved")
	}
	if l.deny {
		return errDenyAll
	}
	return nil
}

func (l *authorizerLog) asked() []direction {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.seen)
}

// TestEveryInboundPathAuthorized: with an authorizer that denies everything, each of
// the three entry points into a local pod (inbound HBONE, inbound plaintext, same node)
// asks it once with the resolved record, dials nothing and refuses (401 for HBONE);
// outbound connections to another node or out of the mesh are not its to decide.
func TestEveryInboundPathAuthorized(t *testing.T) {
	tests := []struct {
		name     string
		serve    func(n *testNode) (refused func() bool)
		wantDir  direction
		asked    bool
		refusals string // direction label of ambit_connections_refused_total
	}{
		{"same node", func(n *testNode) func() bool {
			c, client := clientConn(t, "198.18.2.20:40000", "198.18.2.10:8080")
			n.handleOutbound(context.Background(), c)
			return func() bool { return readsEOF(client) }
		}, dirLocal, true, "local"},
		{"inbound HBONE", func(n *testNode) func() bool {
			s, _ := inboundStream(t, idClient, "198.18.0.1:50000", "198.18.2.10:15008", "198.18.2.10:8080", "198.18.1.10:40000")
			n.serveHBONE(s)
			return func() bool { _, code := s.answer(); return code == http.StatusUnauthorized }
		}, dirInboundHBONE, true, "inbound"},
		{"inbound plaintext", func(n *testNode) func() bool {
			c, client := clientConn(t, "198.18.2.12:5000", "198.18.2.10:8080")
			n.handleInboundPlain(context.Background(), c)
			return func() bool { return readsEOF(client) }
		}, dirInboundPlain, true, "inbound_plaintext"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newTestNode(t, "node2")
			authz := &authorizerLog{deny: true}
			n.authorize = authz.authorize
			refused := tt.serve(n)
			if got := authz.asked(); !slices.Equal(got, []direction{tt.wantDir}) {
				t.Fatalf("authorizer asked for %v, want once for %v", got, tt.wantDir)
			}
			if d := n.dialed(); len(d) != 0 {
				t.Fatalf("dialed %v after a denial", d)
			}
			if !refused() {
				t.Fatal("the denied connection was not refused")
			}
			if v := counterValue(t, n.m.refused.WithLabelValues(tt.refusals)); v != 1 {
				t.Fatalf("refused{direction=%q} = %v, want 1", tt.refusals, v)
			}
			n.waitLog(t, msgRefused, errDenyAll.Error())
		})
	}
	// Paths that do not end at a local pod: the destination's ztunnel decides.
	n := newTestNode(t, "node1")
	authz := &authorizerLog{deny: true}
	n.authorize = authz.authorize
	for _, dst := range []string{"198.18.2.10:8080", "198.18.2.12:9000"} {
		if d := n.route(n.store.Load(), newRecord(dirOutbound, ap("198.18.1.10:40000"), ap(dst))); d.action == actRefuse {
			t.Errorf("outbound to %s refused: %v", dst, d.reason)
		}
	}
	if got := authz.asked(); len(got) != 0 {
		t.Errorf("authorizer asked for %v on outbound paths", got)
	}
}

// readsEOF reports whether c's peer closed it.
func readsEOF(c interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return err == io.EOF
}

// TestEntryPointsRelay: each entry point, allowed, opens the upstream its decision
// names and relays both ways until both sides closed, then logs one access-log line
// with the record's fields under Istio's keys.
func TestEntryPointsRelay(t *testing.T) {
	type start func(t *testing.T, n *testNode) (client io.ReadWriteCloser, wait func())
	outbound := func(src, dst string) start {
		return func(t *testing.T, n *testNode) (io.ReadWriteCloser, func()) {
			c, client := clientConn(t, src, dst)
			done := make(chan struct{})
			go func() { n.handleOutbound(context.Background(), c); close(done) }()
			return client, func() { <-done }
		}
	}
	tests := []struct {
		name     string
		node     string
		start    start
		wantDial dialCall
		wantLog  []string
	}{
		{"outbound over HBONE", "node1", outbound("198.18.1.10:40000", "198.19.0.10:80"),
			dialCall{kind: "hbone", target: "198.18.2.10:15008"},
			[]string{"direction=outbound", "src.workload=client", "src.namespace=mesh", "dst.workload=echo-a",
				"dst.namespace=mesh", "dst.service=echo.mesh.svc.cluster.local", "dst.hbone_addr=198.18.2.10:15008",
				"src.identity=" + idClient.String(), "dst.identity=" + idEcho.String()}},
		{"outbound passthrough", "node1", outbound("198.18.1.10:40000", "198.18.9.9:443"),
			dialCall{kind: "dial", target: "198.18.9.9:443"},
			[]string{"direction=outbound", "src.workload=client", "dst.addr=198.18.9.9:443"}},
		{"same node", "node2", outbound("198.18.2.20:40000", "198.18.2.10:8080"),
			dialCall{kind: "transparent", bind: ip("198.18.2.20"), target: "198.18.2.10:8080"},
			[]string{"direction=local", "src.workload=client-2", "dst.workload=echo-a"}},
		{"inbound HBONE", "node2", func(t *testing.T, n *testNode) (io.ReadWriteCloser, func()) {
			s, client := inboundStream(t, idClient, "198.18.0.1:50000", "198.18.2.10:15008", "198.18.2.10:8080", "198.18.1.10:40000")
			done := make(chan struct{})
			go func() { n.serveHBONE(s); close(done) }()
			return client, func() {
				<-done
				if ok, code := s.answer(); !ok || code != 0 {
					t.Errorf("stream accepted %v, rejected %d; want accepted", ok, code)
				}
			}
		}, dialCall{kind: "transparent", bind: ip("198.18.1.10"), target: "198.18.2.10:8080"},
			[]string{"direction=inbound", "src.addr=198.18.1.10:40000", "src.workload=client", "dst.workload=echo-a"}},
		{"inbound plaintext", "node2", func(t *testing.T, n *testNode) (io.ReadWriteCloser, func()) {
			c, client := clientConn(t, "198.18.2.12:5000", "198.18.2.10:8080")
			done := make(chan struct{})
			go func() { n.handleInboundPlain(context.Background(), c); close(done) }()
			return client, func() { <-done }
		}, dialCall{kind: "transparent", bind: ip("198.18.2.12"), target: "198.18.2.10:8080"},
			[]string{"direction=inbound_plaintext", "src.workload=plain", "src.namespace=plain", "dst.workload=echo-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newTestNode(t, tt.node)
			authz := &authorizerLog{}
			n.authorize = authz.authorize
			client, wait := tt.start(t, n)
			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			pod := n.pod(t)
			got := make([]byte, 4)
			if _, err := io.ReadFull(pod, got); err != nil || string(got) != "ping" {
				t.Fatalf("pod read %q, %v", got, err)
			}
			pod.Write([]byte("pong"))
			pod.CloseWrite()
			client.(interface{ CloseWrite() error }).CloseWrite()
			if b, err := io.ReadAll(client); err != nil || string(b) != "pong" {
				t.Fatalf("client read %q, %v", b, err)
			}
			if b, err := io.ReadAll(pod); err != nil || len(b) != 0 {
				t.Fatalf("pod read %q, %v after the client's half-close", b, err)
			}
			wait()
			d := n.dialed()
			if len(d) != 1 || d[0].kind != tt.wantDial.kind || d[0].bind != tt.wantDial.bind || d[0].target != tt.wantDial.target {
				t.Fatalf("dialed %+v, want %+v", d, tt.wantDial)
			}
			line := n.waitLog(t, append([]string{`msg="connection closed"`, "bytes_sent=4", "bytes_recv=4"}, tt.wantLog...)...)
			if d[0].kind == "hbone" {
				req := d[0].req
				if req.Authority != "198.18.2.10:8080" || req.Src != idClient || req.Dst != idEcho ||
					req.Forwarded != ap("198.18.1.10:40000") || req.Host != "echo.mesh.svc.cluster.local" {
					t.Errorf("HBONE request %+v", req)
				}
			}
			wantAsked := 1
			if tt.wantDial.kind != "transparent" {
				wantAsked = 0 // not to a local pod
			}
			if got := authz.asked(); len(got) != wantAsked {
				t.Errorf("authorizer asked %v; want %d times (log %s)", got, wantAsked, line)
			}
		})
	}
}

// TestConnInfoJSON: /config_dump's connection entries keep their keys.
func TestConnInfoJSON(t *testing.T) {
	rec := newRecord(dirOutbound, ap("198.18.1.10:40000"), ap("198.19.0.10:80"))
	rec.ID = 7
	rec.Dst = ap("198.18.2.10:8080")
	rec.HBONEAddr = ap("198.18.2.10:15008")
	rec.SrcWorkload = workloadRef{Namespace: "mesh", Name: "client"}
	rec.DstWorkload = workloadRef{Namespace: "mesh", Name: "echo-a"}
	rec.SrcID, rec.DstID = idClient, idEcho
	rec.Service = serviceRef{Namespace: "mesh", Name: "echo", Hostname: "echo.mesh.svc.cluster.local"}
	rec.MutualTLS = true
	rec.Sent.Add(3)
	rec.Received.Add(5)
	b, err := json.Marshal(rec.info())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"id": 7.0, "direction": "outbound", "src": "198.18.1.10:40000", "dst": "198.18.2.10:8080",
		"origDst": "198.19.0.10:80", "srcIdentity": idClient.String(), "dstIdentity": idEcho.String(),
		"srcWorkload": "mesh/client", "dstWorkload": "mesh/echo-a", "dstService": "echo.mesh.svc.cluster.local",
		"hboneAddr": "198.18.2.10:15008", "security": "mutual_tls", "bytesSent": 3.0, "bytesReceived": 5.0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, ok := got["start"]; !ok {
		t.Error("no start")
	}
	if len(got) != len(want)+1 {
		t.Errorf("keys %v, want those of %v and start", got, want)
	}
}
