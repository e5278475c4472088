package ztunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
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

func testSnapshot(t *testing.T) *discovery.Snapshot {
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
		},
		Services: []*discovery.Service{{
			Name: "echo", Namespace: "mesh", VIPs: []netip.Addr{ip("198.19.0.10")},
			Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "echo"},
		}, {
			Name: "empty", Namespace: "mesh", VIPs: []netip.Addr{ip("198.19.0.11")},
			Ports: []discovery.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "nothing"},
		}},
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
			r, err := z.resolve(snap, ap(tt.dst))
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
		r, err := z.resolve(snap, netip.MustParseAddrPort("198.19.0.10:80"))
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

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// pipeConn hides the TCP type so the buffered path is exercised too.
type pipeConn struct{ net.Conn }

func (p pipeConn) CloseWrite() error { return p.Conn.(*net.TCPConn).CloseWrite() }

// TestHalfClose: the raw shutdown sends FIN and leaves the other direction open, for
// plain and counted sockets; a socket already closed is not an error (the other
// direction closed both ends first), a socket the peer reset is.
func TestHalfClose(t *testing.T) {
	tests := []struct {
		name    string
		wrap    func(*net.TCPConn) net.Conn
		prepare func(t *testing.T, c, peer *net.TCPConn)
		wantErr bool
	}{
		{name: "tcp", wrap: func(c *net.TCPConn) net.Conn { return c }},
		{name: "counted", wrap: func(c *net.TCPConn) net.Conn { return countedConn{c, &counter{}} }},
		{name: "buffered", wrap: func(c *net.TCPConn) net.Conn { return pipeConn{c} }},
		{
			name:    "closed",
			wrap:    func(c *net.TCPConn) net.Conn { return c },
			prepare: func(t *testing.T, c, _ *net.TCPConn) { c.Close() },
		},
		{
			name: "reset by peer",
			wrap: func(c *net.TCPConn) net.Conn { return c },
			prepare: func(t *testing.T, c, peer *net.TCPConn) {
				peer.SetLinger(0)
				peer.Close()
				// Wait for the RST: a read fails once it has arrived.
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err == nil {
					t.Fatal("read after the peer's reset succeeded")
				}
			},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, peer := tcpPair(t)
			if tt.prepare != nil {
				tt.prepare(t, c, peer)
			}
			err := halfClose(tt.wrap(c))
			if tt.wantErr {
				if err == nil {
					t.Fatal("halfClose succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("halfClose: %v", err)
			}
			if tt.prepare != nil {
				return
			}
			peer.SetDeadline(time.Now().Add(5 * time.Second))
			if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("peer read %d, %v; want EOF", n, err)
			}
			// The other direction stays open.
			if _, err := peer.Write([]byte("z")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 'z' {
				t.Fatalf("read after half-close: %q, %v", b, err)
			}
		})
	}
}

func TestPumpHalfClose(t *testing.T) {
	for _, wrap := range []struct {
		name string
		f    func(net.Conn) net.Conn
	}{{"splice", func(c net.Conn) net.Conn { return c }}, {"buffered", func(c net.Conn) net.Conn { return pipeConn{c} }}} {
		t.Run(wrap.name, func(t *testing.T) {
			client, down := tcpPair(t)
			up, server := tcpPair(t)
			var sent, recv counter
			done := make(chan error, 1)
			go func() { done <- pump(wrap.f(down), wrap.f(up), &sent, &recv) }()

			req := bytes.Repeat([]byte("q"), 100000)
			if _, err := client.Write(req); err != nil {
				t.Fatal(err)
			}
			client.CloseWrite()
			got, err := io.ReadAll(server) // EOF arrives only through the half-close
			if err != nil || !bytes.Equal(got, req) {
				t.Fatalf("server read %d bytes, err %v", len(got), err)
			}
			// The server can still answer after the client half-closed.
			resp := []byte("answer after half-close")
			if _, err := server.Write(resp); err != nil {
				t.Fatal(err)
			}
			server.CloseWrite()
			got, err = io.ReadAll(client)
			if err != nil || !bytes.Equal(got, resp) {
				t.Fatalf("client read %q, err %v", got, err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("pump: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("pump did not finish after both halves closed")
			}
			if sent.n.Load() != int64(len(req)) || recv.n.Load() != int64(len(resp)) {
				t.Fatalf("counted %d/%d bytes, want %d/%d", sent.n.Load(), recv.n.Load(), len(req), len(resp))
			}
		})
	}
}

func TestPumpAbortOnReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(*net.TCPConn) net.Conn
	}{
		{"sockets", func(c *net.TCPConn) net.Conn { return c }},
		{"async stream", func(c *net.TCPConn) net.Conn { return asyncConn{c} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, down := tcpPair(t)
			up, server := tcpPair(t)
			var sent, recv counter
			done := make(chan error, 1)
			go func() { done <- pump(down, tc.up(up), &sent, &recv) }()
			// An abortive close on one side must tear down the other promptly.
			server.SetLinger(0)
			server.Close()
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(client); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("client was not closed after the server reset")
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("pump did not finish after a reset")
			}
		})
	}
}

// tryWriterToConn stands in for an HBONE stream: its WriteTo hands data to the
// destination's non-blocking writer first, as the stream's read loop does, in two
// buffers at once where it takes them (a burst of receive chunks).
type tryWriterToConn struct{ net.Conn }

func (c tryWriterToConn) WriteTo(w io.Writer) (int64, error) {
	tw := hbone.NonBlocking(w)
	if tw == nil {
		return 0, errors.New("destination takes no non-blocking writes")
	}
	bw, _ := tw.(hbone.BuffersTryWriter)
	var total int64
	buf := make([]byte, 7000)
	for {
		n, err := c.Conn.Read(buf)
		if n > 0 {
			var k int
			var werr error
			if bw != nil {
				k, werr = bw.TryWriteBuffers([][]byte{buf[:n/2], buf[n/2 : n]})
			} else {
				k, werr = tw.TryWrite(buf[:n])
			}
			if werr == nil && k < n {
				_, werr = w.Write(buf[k:n])
			}
			if werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// TestPumpCountsDirectWrites: bytes a stream writes through the pump's non-blocking
// writer reach the pod socket and are counted.
func TestPumpCountsDirectWrites(t *testing.T) {
	client, down := tcpPair(t)
	up, server := tcpPair(t)
	var sent, recv counter
	done := make(chan error, 1)
	go func() { done <- pump(down, tryWriterToConn{up}, &sent, &recv) }()
	resp := make([]byte, 300000) // not one repeated byte: order matters
	for i := range resp {
		resp[i] = byte(i % 251)
	}
	go func() {
		server.Write(resp)
		server.CloseWrite()
	}()
	got, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(got, resp) {
		t.Fatalf("client read %d bytes, err %v", len(got), err)
	}
	client.CloseWrite()
	if err := <-done; err != nil {
		t.Fatalf("pump: %v", err)
	}
	if recv.n.Load() != int64(len(resp)) {
		t.Fatalf("counted %d bytes, want %d", recv.n.Load(), len(resp))
	}
}

// asyncConn stands in for an HBONE stream that copies itself to a socket without the
// pump's help (hbone's WriteToAsync).
type asyncConn struct{ *net.TCPConn }

func (c asyncConn) WriteToAsync(w io.Writer, done func(int64, error)) {
	go func() { done(tryWriterToConn{c.TCPConn}.WriteTo(w)) }()
}

// TestPumpAsync: with a stream on one side, the calling goroutine is free once its own
// direction ended (the client's half-close), and done runs once, after the server's
// answer and both closes, with the bytes counted.
func TestPumpAsync(t *testing.T) {
	client, down := tcpPair(t)
	up, server := tcpPair(t)
	var sent, recv counter
	var calls atomic.Int32
	done := make(chan error, 2)
	returned := make(chan struct{})
	go func() {
		pumpAsync(down, asyncConn{up}, &sent, &recv, func(err error) {
			calls.Add(1)
			done <- err
		})
		close(returned)
	}()
	req := bytes.Repeat([]byte("q"), 100000)
	client.Write(req)
	client.CloseWrite()
	if got, err := io.ReadAll(server); err != nil || !bytes.Equal(got, req) {
		t.Fatalf("server read %d bytes, err %v", len(got), err)
	}
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("pumpAsync did not return after its own direction ended")
	}
	resp := bytes.Repeat([]byte("r"), 300000)
	server.Write(resp)
	server.CloseWrite()
	if got, err := io.ReadAll(client); err != nil || !bytes.Equal(got, resp) {
		t.Fatalf("client read %d bytes, err %v", len(got), err)
	}
	if err := <-done; err != nil {
		t.Fatalf("pump: %v", err)
	}
	if _, err := down.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write to the pod side after done: %v, want it closed", err)
	}
	if n := calls.Load(); n != 1 || sent.n.Load() != int64(len(req)) || recv.n.Load() != int64(len(resp)) {
		t.Fatalf("done ran %d times, counted %d/%d bytes, want once and %d/%d", n, sent.n.Load(), recv.n.Load(), len(req), len(resp))
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

// convertible stands for a redirect.Socket: a socket that can become a *net.TCPConn.
type convertible struct {
	net.Conn
	tc  *net.TCPConn
	err error
}

func (c convertible) TCPConn() (*net.TCPConn, error) { return c.tc, c.err }

// Between two sockets, sockets that can become *net.TCPConn do (for splice); next to an
// HBONE stream, or when the conversion fails, nothing changes.
func TestSpliceable(t *testing.T) {
	a, b := tcpPair(t)
	conv := convertible{pipeConn{a}, a, nil}
	broken := convertible{pipeConn{a}, nil, errors.New("no")}
	stream := &hbone.Conn{}
	tests := []struct {
		name         string
		in1, in2     net.Conn
		want1, want2 net.Conn
	}{
		{"two sockets", conv, b, a, b},
		{"conversion fails", broken, b, broken, b},
		{"stream and socket", stream, conv, stream, conv},
		{"socket and stream", conv, stream, conv, stream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got1, got2 := spliceable(tt.in1, tt.in2)
			if got1 != tt.want1 || got2 != tt.want2 {
				t.Fatalf("spliceable = %T, %T; want %T, %T", got1, got2, tt.want1, tt.want2)
			}
		})
	}
}
