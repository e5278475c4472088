package ztunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestPeerLimits: with caps of 2, a peer gets two slots of each kind and not a third;
// other peers and the other kind are not affected; slots come back when released, once
// however often a connection releases; a connection without an authenticated peer is not
// counted, nor is any with a cap of 0.
func TestPeerLimits(t *testing.T) {
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/other")
	type step struct {
		op    string // "acquire" or "release"
		conn  int    // index into the steps' records
		peer  spiffeid.ID
		kind  limitKind
		limit bool // acquire fails with errPeerLimit
	}
	tests := []struct {
		name       string
		maxStreams int
		steps      []step
		wantInUse  map[spiffeid.ID]int // streams in use at the end
	}{
		{"two, not three", 2, []step{
			{"acquire", 0, idClient, limitStreams, false},
			{"acquire", 1, idClient, limitStreams, false},
			{"acquire", 2, idClient, limitStreams, true},
		}, map[spiffeid.ID]int{idClient: 2}},
		{"per peer", 2, []step{
			{"acquire", 0, idClient, limitStreams, false},
			{"acquire", 1, idClient, limitStreams, false},
			{"acquire", 2, other, limitStreams, false},
		}, map[spiffeid.ID]int{idClient: 2, other: 1}},
		{"per kind", 2, []step{
			{"acquire", 0, idClient, limitStreams, false},
			{"acquire", 1, idClient, limitStreams, false},
			{"acquire", 0, idClient, limitUpstreams, false},
			{"acquire", 1, idClient, limitUpstreams, false},
			{"acquire", 2, idClient, limitUpstreams, true},
		}, map[spiffeid.ID]int{idClient: 2}},
		{"released slots come back once", 2, []step{
			{"acquire", 0, idClient, limitStreams, false},
			{"acquire", 1, idClient, limitStreams, false},
			{"release", 0, idClient, 0, false},
			{"release", 0, idClient, 0, false},
			{"acquire", 2, idClient, limitStreams, false},
			{"acquire", 3, idClient, limitStreams, true},
		}, map[spiffeid.ID]int{idClient: 2}},
		{"all released", 2, []step{
			{"acquire", 0, idClient, limitStreams, false},
			{"acquire", 0, idClient, limitUpstreams, false},
			{"release", 0, idClient, 0, false},
		}, map[spiffeid.ID]int{idClient: 0}},
		{"no peer", 2, []step{
			{"acquire", 0, spiffeid.ID{}, limitStreams, false},
			{"acquire", 1, spiffeid.ID{}, limitStreams, false},
			{"acquire", 2, spiffeid.ID{}, limitStreams, false},
		}, map[spiffeid.ID]int{{}: 0}},
		{"no cap", 0, []step{
			{"acquire", 0, idClient, limitStreams, false},
			{"acquire", 1, idClient, limitStreams, false},
			{"acquire", 2, idClient, limitStreams, false},
		}, map[spiffeid.ID]int{idClient: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newPeerLimits(tt.maxStreams, 2)
			recs := make([]*record, 4)
			for i := range recs {
				recs[i] = &record{}
			}
			for i, s := range tt.steps {
				if s.op == "release" {
					l.release(recs[s.conn])
					continue
				}
				err := l.acquire(recs[s.conn], s.peer, s.kind)
				if got := errors.Is(err, errPeerLimit); got != s.limit || (err != nil && !s.limit) {
					t.Fatalf("step %d: acquire %s for %s: %v, want limited %v", i, s.kind, s.peer, err, s.limit)
				}
			}
			for peer, want := range tt.wantInUse {
				if got := l.inUse(peer, limitStreams); got != want {
					t.Errorf("%s: %d streams in use, want %d", peer, got, want)
				}
			}
			if tt.name == "all released" && len(l.use) != 0 {
				t.Errorf("entries %v left for peers holding nothing", l.use)
			}
		})
	}
}

// TestStreamCapPerPeer: with a cap of 2 streams per peer, a peer's third concurrent
// stream, over any of its connections, is answered 503, counted and logged, while
// another peer's is served; once one of the two ends, the peer's next stream is served.
func TestStreamCapPerPeer(t *testing.T) {
	n := newTestNode(t, "node2")
	n.limits = newPeerLimits(2, defaultMaxUpstreamsPerPeer)
	serve := func(peer spiffeid.ID, tunnelSrc string) (*fakeStream, *net.TCPConn, chan struct{}) {
		s, client := inboundStream(t, peer, tunnelSrc, "198.18.2.10:15008", "198.18.2.10:8080", "")
		done := make(chan struct{})
		go func() { n.serveHBONE(s); close(done) }()
		return s, client, done
	}
	// Two streams, over two tunnel connections, held open.
	var clients []*net.TCPConn
	var pods []*net.TCPConn
	var dones []chan struct{}
	for _, src := range []string{"198.18.0.1:50000", "198.18.0.1:50001"} {
		_, c, done := serve(idClient, src)
		clients, dones = append(clients, c), append(dones, done)
		pods = append(pods, n.pod(t))
	}
	s3, _, done3 := serve(idClient, "198.18.0.1:50002")
	<-done3
	if ok, code := s3.answer(); ok || code != http.StatusServiceUnavailable {
		t.Fatalf("third stream: accepted %v, rejected %d; want 503", ok, code)
	}
	if v := counterValue(t, n.m.peerLimited[limitStreams]); v != 1 {
		t.Fatalf("ambit_peer_limit_refused_total{limit=streams} = %v, want 1", v)
	}
	n.waitLog(t, msgRefused, "direction=inbound", errPeerLimit.Error(), "src.identity="+idClient.String())

	// Another peer is not held to the client's count.
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/other")
	_, c4, done4 := serve(other, "198.18.0.2:50000")
	pod4 := n.pod(t)
	closeBoth(t, c4, pod4)
	<-done4

	// One of the two ends: the peer has room again.
	closeBoth(t, clients[0], pods[0])
	<-dones[0]
	if got := n.limits.inUse(idClient, limitStreams); got != 1 {
		t.Fatalf("%d streams in use after one ended, want 1", got)
	}
	s5, c5, done5 := serve(idClient, "198.18.0.1:50003")
	pod5 := n.pod(t)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if ok, code := s5.answer(); ok {
			break
		} else if code != 0 || time.Now().After(deadline) {
			t.Fatalf("stream after one ended: rejected %d, want accepted", code)
		}
	}
	closeBoth(t, c5, pod5)
	<-done5
	closeBoth(t, clients[1], pods[1])
	<-dones[1]
	if got := n.limits.inUse(idClient, limitStreams) + n.limits.inUse(idClient, limitUpstreams); got != 0 {
		t.Fatalf("%d slots in use after every stream ended", got)
	}
}

// closeBoth ends a relayed connection from both sides and waits for the client to see it.
func closeBoth(t *testing.T, client, pod *net.TCPConn) {
	t.Helper()
	client.CloseWrite()
	pod.CloseWrite()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); err != nil {
		t.Fatalf("client: %v", err)
	}
}

// TestUpstreamCapSameNode: with a cap of 2 upstream sockets per identity, a local pod's
// third concurrent same-node connection is refused before anything is dialed, and
// counted.
func TestUpstreamCapSameNode(t *testing.T) {
	n := newTestNode(t, "node2")
	n.limits = newPeerLimits(defaultMaxStreamsPerPeer, 2)
	connect := func(port int) (*net.TCPConn, chan struct{}) {
		c, client := clientConn(t, netip.AddrPortFrom(ip("198.18.2.20"), uint16(port)).String(), "198.18.2.10:8080")
		done := make(chan struct{})
		go func() { n.handleOutbound(context.Background(), c); close(done) }()
		return client, done
	}
	for port := range 2 {
		connect(40000 + port)
		n.pod(t)
	}
	client, done := connect(40002)
	<-done
	if !readsEOF(client) {
		t.Fatal("third connection was not closed")
	}
	if d := n.dialed(); len(d) != 2 {
		t.Fatalf("dialed %d times, want 2", len(d))
	}
	if v := counterValue(t, n.m.peerLimited[limitUpstreams]); v != 1 {
		t.Fatalf("ambit_peer_limit_refused_total{limit=upstreams} = %v, want 1", v)
	}
	if v := counterValue(t, n.m.refused.WithLabelValues("local")); v != 1 {
		t.Fatalf("refused{direction=local} = %v, want 1", v)
	}
	n.waitLog(t, msgRefused, "direction=local", errPeerLimit.Error())
}
