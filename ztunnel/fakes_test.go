package ztunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/internal/relay"
	"github.com/ambitmesh/ambit/internal/relay/relaytest"
)

// Identities of testSnapshot's workloads.
var (
	idClient = spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/client")
	idEcho   = spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/echo")
)

// addrConn is a loopback connection that claims the mesh addresses a captured or
// accepted socket would have.
type addrConn struct {
	*net.TCPConn
	local, remote netip.AddrPort
}

func (c addrConn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.local) }
func (c addrConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// clientConn returns ztunnel's end of a connection from src to dst, and the client's.
func clientConn(tb testing.TB, src, dst string) (addrConn, *net.TCPConn) {
	client, zt := relaytest.TCPPair(tb)
	return addrConn{zt, netip.MustParseAddrPort(dst), netip.MustParseAddrPort(src)}, client
}

// fakeStream is an inbound HBONE stream over a loopback connection.
type fakeStream struct {
	addrConn
	req *hbone.ConnectRequest

	mu       sync.Mutex
	accepted bool
	rejected int
}

// inboundStream returns a stream from peer, whose tunnel came from tunnelSrc to
// tunnelDst, for target, claiming forwarded (may be empty); and the peer's end.
func inboundStream(tb testing.TB, peer spiffeid.ID, tunnelSrc, tunnelDst, target, forwarded string) (*fakeStream, *net.TCPConn) {
	c, client := clientConn(tb, tunnelSrc, tunnelDst)
	req := &hbone.ConnectRequest{
		Authority:  target,
		Target:     netip.MustParseAddrPort(target),
		Peer:       peer,
		LocalAddr:  c.LocalAddr(),
		RemoteAddr: c.RemoteAddr(),
	}
	if forwarded != "" {
		req.Forwarded = netip.MustParseAddrPort(forwarded)
	}
	return &fakeStream{addrConn: c, req: req}, client
}

func (s *fakeStream) Request() *hbone.ConnectRequest { return s.req }

func (s *fakeStream) Accept() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted = true
	return nil
}

func (s *fakeStream) Reject(code int, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejected = code
	return nil
}

func (s *fakeStream) answer() (accepted bool, rejected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted, s.rejected
}

// heldIdentity holds every certificate.
type heldIdentity struct{ identity.Source }

func (heldIdentity) Certificate(context.Context, spiffeid.ID) (*tls.Certificate, error) {
	return &tls.Certificate{}, nil
}

// syncBuffer is a log output read while connections write to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// dialCall is one upstream connection ztunnel opened.
type dialCall struct {
	kind   string // "dial", "transparent", "hbone"
	bind   netip.Addr
	target string
	req    hbone.Request // for "hbone"
}

// testNode is a Ztunnel on a node of testSnapshot with every collaborator faked: its
// upstream connections are loopback connections whose far ends (the pods, or the peer
// ztunnel) arrive on pods.
type testNode struct {
	*Ztunnel
	logs *syncBuffer
	pods chan *net.TCPConn

	mu    sync.Mutex
	dials []dialCall
	// fail makes connects fail: a dial to a target ("ip:port"; for HBONE the peer's
	// address) with the error, and for "answer <authority>" an HBONE stream's answer.
	fail map[string]error
	// gates hold the answer of HBONE streams to an authority until the test sends it.
	gates map[string]chan error
}

// gate makes the answer of the next HBONE streams to authority wait for the test to
// send it on the channel returned.
func (n *testNode) gate(authority string) chan error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gates == nil {
		n.gates = map[string]chan error{}
	}
	ch := make(chan error, 1)
	n.gates[authority] = ch
	return ch
}

// failing makes the node's connects to key fail with err (see testNode.fail).
func (n *testNode) failing(key string, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fail == nil {
		n.fail = map[string]error{}
	}
	n.fail[key] = err
}

func (n *testNode) failure(key string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fail[key]
}

func newTestNode(tb testing.TB, node string) *testNode {
	tb.Helper()
	return newTestNodeWith(tb, node, testSnapshot(tb))
}

// newTestNodeWith is newTestNode on a node of snap.
func newTestNodeWith(tb testing.TB, node string, snap *discovery.Snapshot) *testNode {
	tb.Helper()
	store := discovery.NewStore()
	store.Set(snap)
	reg := prometheus.NewRegistry()
	n := &testNode{logs: &syncBuffer{}, pods: make(chan *net.TCPConn, 16)}
	z := &Ztunnel{
		cfg:    Config{NodeName: node}.WithDefaults(),
		td:     spiffeid.RequireTrustDomainFromString("cluster.local"),
		log:    slog.New(slog.NewTextHandler(n.logs, nil)),
		reg:    reg,
		m:      newMetrics(reg),
		store:  store,
		ident:  heldIdentity{},
		conns:  newConnTable(),
		limits: newPeerLimits(defaultMaxStreamsPerPeer, defaultMaxUpstreamsPerPeer),
		health: newEndpointHealth(defaultEndpointBackoff, defaultEndpointBackoffMax),
		relay:  &relay.Relay{},
	}
	z.dial = func(_ context.Context, _, addr string) (net.Conn, error) {
		return n.upstream(tb, dialCall{kind: "dial", target: addr})
	}
	z.dialT = func(_ context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		return n.upstream(tb, dialCall{kind: "transparent", bind: src, target: dst.String()})
	}
	z.pool = fakeDialer{n, tb}
	n.Ztunnel = z
	// Close what is still relayed and wait for it: no handler outlives its test.
	tb.Cleanup(func() { z.conns.drain(ended) })
	return n
}

// upstream records call and returns a connection for it, whose far end goes to pods;
// or the failure the test set for its target.
func (n *testNode) upstream(tb testing.TB, call dialCall) (*net.TCPConn, error) {
	n.mu.Lock()
	n.dials = append(n.dials, call)
	err := n.fail[call.target]
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	near, far := relaytest.TCPPair(tb)
	n.pods <- far
	return near, nil
}

func (n *testNode) dialed() []dialCall {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]dialCall(nil), n.dials...)
}

// pod returns the far end of the next upstream connection.
func (n *testNode) pod(tb testing.TB) *net.TCPConn {
	tb.Helper()
	select {
	case p := <-n.pods:
		return p
	case <-time.After(5 * time.Second):
		tb.Fatal("no upstream connection was opened")
		return nil
	}
}

// waitLog waits for a log line containing every one of parts.
func (n *testNode) waitLog(tb testing.TB, parts ...string) string {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(n.logs.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return line
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no log line with %q in:\n%s", parts, n.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeDialer is the HBONE pool: a stream is a loopback connection to the "peer".
type fakeDialer struct {
	n  *testNode
	tb testing.TB
}

// DialEarly sends first ahead, as the request would carry it. A stream the test
// refuses ("answer <authority>") goes nowhere: its far end is not a pod.
func (d fakeDialer) DialEarly(_ context.Context, req hbone.Request, first []byte) (HBONEConn, error) {
	answer := d.n.failure("answer " + req.Authority)
	call := dialCall{kind: "hbone", target: req.Addr, req: req}
	var c *net.TCPConn
	if answer != nil {
		d.n.mu.Lock()
		d.n.dials = append(d.n.dials, call)
		d.n.mu.Unlock()
		c, _ = relaytest.TCPPair(d.tb)
	} else {
		var err error
		if c, err = d.n.upstream(d.tb, call); err != nil {
			return nil, err
		}
	}
	if _, err := c.Write(first); err != nil {
		return nil, err
	}
	d.n.mu.Lock()
	gate := d.n.gates[req.Authority]
	d.n.mu.Unlock()
	return fakeHBONE{c, answer, gate}, nil
}

// fakeHBONE is a stream answered with answer (nil: 200), or what gate brings.
type fakeHBONE struct {
	*net.TCPConn
	answer error
	gate   chan error
}

func (c fakeHBONE) Answer(ctx context.Context) error {
	if c.gate == nil {
		return c.answer
	}
	select {
	case err := <-c.gate:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (fakeDialer) Stats() hbone.PoolStats { return hbone.PoolStats{} }
func (fakeDialer) Close() error           { return nil }

func counterValue(tb testing.TB, c prometheus.Counter) float64 {
	tb.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		tb.Fatal(err)
	}
	return d.GetCounter().GetValue()
}
