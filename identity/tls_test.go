package identity_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

var (
	meshTD  = spiffeid.RequireTrustDomainFromString("cluster.local")
	otherTD = spiffeid.RequireTrustDomainFromString("other.local")
	idA     = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/a")
	idB     = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/b")
	idC     = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/c")
	idOther = spiffeid.RequireFromString("spiffe://other.local/ns/default/sa/a")
)

// testRoot is a throwaway CA that signs arbitrary leaves, including bad ones.
// An intermediate (from sub) also carries the chain up to its root.
type testRoot struct {
	cert  *x509.Certificate
	key   crypto.Signer
	chain [][]byte // DER of cert and the intermediates above it; nil for a root
}

func newTestRoot(tb testing.TB) *testRoot {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             time.Now().Add(-48 * time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &testRoot{cert: cert, key: key}
}

// sub signs an intermediate CA named cn with key (mod may change it).
func (r *testRoot) sub(tb testing.TB, cn string, key crypto.Signer, mod func(*x509.Certificate)) *testRoot {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, key.Public(), r.key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &testRoot{cert: cert, key: key, chain: append([][]byte{der}, r.chain...)}
}

// leaf signs a leaf for uris with a new P-256 key (valid for the last and
// next hour, server + client auth, unless mod changes it).
func (r *testRoot) leaf(tb testing.TB, uris []string, mod func(*x509.Certificate)) *tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return r.leafKey(tb, key, uris, mod)
}

// leafKey is leaf with the given key; the chain includes r's intermediates.
func (r *testRoot) leafKey(tb testing.TB, key crypto.Signer, uris []string, mod func(*x509.Certificate)) *tls.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, key.Public(), r.key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Certificate{Certificate: append([][]byte{der}, r.chain...), PrivateKey: key, Leaf: leaf}
}

// chain parses a tls.Certificate's chain, leaf first.
func chainOf(tb testing.TB, c *tls.Certificate) []*x509.Certificate {
	tb.Helper()
	out := make([]*x509.Certificate, len(c.Certificate))
	for i, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = x
	}
	return out
}

// staticSource serves fixed certificates and trusts one root for meshTD.
type staticSource struct {
	certs  map[spiffeid.ID]*tls.Certificate
	bundle *x509bundle.Bundle
}

func (s *staticSource) Certificate(_ context.Context, id spiffeid.ID) (*tls.Certificate, error) {
	if c, ok := s.certs[id]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("%s: %w", id, identity.ErrNotAuthorized)
}

func (s *staticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.bundle.TrustDomain() {
		return nil, fmt.Errorf("no bundle for %s", td)
	}
	return s.bundle, nil
}

func (s *staticSource) SetWanted([]spiffeid.ID)           {}
func (s *staticSource) Ready() bool                       { return true }
func (s *staticSource) Certificates() []identity.CertInfo { return nil }

type side struct {
	state tls.ConnectionState
	err   error
}

// handshake runs a TLS handshake over net.Pipe. Each side's outcome includes
// a one-byte exchange, because in TLS 1.3 the client finishes before the
// server has checked the client certificate.
func handshake(tb testing.TB, ccfg, scfg *tls.Config) (client, server side) {
	tb.Helper()
	pc, ps := net.Pipe()
	c, s := newAsyncConn(pc), newAsyncConn(ps)
	tb.Cleanup(func() { c.Close(); s.Close() })
	// A guard against a hung test, not a timing assertion.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		tc := tls.Client(c, ccfg)
		err := tc.HandshakeContext(ctx)
		if err == nil {
			var b [1]byte
			_, err = io.ReadFull(tc, b[:])
		}
		client = side{tc.ConnectionState(), err}
		c.Close()
	})
	wg.Go(func() {
		ts := tls.Server(s, scfg)
		err := ts.HandshakeContext(ctx)
		if err == nil {
			_, err = ts.Write([]byte{1})
		}
		server = side{ts.ConnectionState(), err}
		if err != nil {
			s.Close()
		}
	})
	wg.Wait()
	return client, server
}

func pickID(id spiffeid.ID) func(*tls.ClientHelloInfo) (spiffeid.ID, error) {
	return func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return id, nil }
}

// TestHandshakeWithManager runs the real path: built-in CA -> Manager -> mTLS.
func TestHandshakeWithManager(t *testing.T) {
	authority, err := ca.New(ca.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	newManager := func(node string) *identity.Manager {
		m, err := identity.NewManager(identity.ManagerConfig{
			Issuer:      ca.LocalIssuer{CA: authority, Node: node},
			TrustDomain: meshTD,
			Roots:       authority.Roots(),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	clientSrc, serverSrc := newManager("n1"), newManager("n2")

	client, server := handshake(t,
		identity.ClientTLSConfig(clientSrc, idA, idB),
		identity.ServerTLSConfig(serverSrc, meshTD, pickID(idB)))
	if client.err != nil || server.err != nil {
		t.Fatalf("handshake: client %v, server %v", client.err, server.err)
	}
	if v := client.state.Version; v != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", v)
	}
	if p := client.state.NegotiatedProtocol; p != "h2" {
		t.Errorf("ALPN %q, want h2", p)
	}
	if got, err := identity.PeerID(client.state); err != nil || got != idB {
		t.Errorf("client PeerID = %v, %v; want %s", got, err, idB)
	}
	if got, err := identity.PeerID(server.state); err != nil || got != idA {
		t.Errorf("server PeerID = %v, %v; want %s", got, err, idA)
	}

	// The CA's leaves serve both roles: each one again, the other way round.
	client, server = handshake(t,
		identity.ClientTLSConfig(serverSrc, idB, idA),
		identity.ServerTLSConfig(clientSrc, meshTD, pickID(idA)))
	if client.err != nil || server.err != nil {
		t.Fatalf("handshake with roles swapped: client %v, server %v", client.err, server.err)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	mesh := newTestRoot(t)
	foreign := newTestRoot(t) // a separate CA
	bundle := x509bundle.FromX509Authorities(meshTD, []*x509.Certificate{mesh.cert})
	expired := func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(-2 * time.Hour)
		c.NotAfter = time.Now().Add(-time.Hour)
	}

	tests := []struct {
		name       string
		clientCert *tls.Certificate // presented as idA; nil = no certificate
		serverCert *tls.Certificate // presented as idB
		serverPick spiffeid.ID      // default idB
		wantClient string           // substring of the client error ("" = ok)
		wantServer string           // substring of the server error ("" = ok)
	}{
		{
			name:       "ok",
			clientCert: mesh.leaf(t, []string{idA.String()}, nil),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
		},
		{
			name:       "wrong server identity",
			clientCert: mesh.leaf(t, []string{idA.String()}, nil),
			serverCert: mesh.leaf(t, []string{idC.String()}, nil),
			wantClient: "identity " + idC.String() + ", want " + idB.String(),
			wantServer: "",
		},
		{
			name:       "client from another trust domain and CA",
			clientCert: foreign.leaf(t, []string{idOther.String()}, nil),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			wantClient: "bad certificate",
			wantServer: `not in trust domain "cluster.local"`,
		},
		{
			name:       "client from a separate CA in the same trust domain",
			clientCert: foreign.leaf(t, []string{idA.String()}, nil),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			wantClient: "bad certificate",
			wantServer: "certificate signed by unknown authority",
		},
		{
			name:       "server from a separate CA",
			clientCert: mesh.leaf(t, []string{idA.String()}, nil),
			serverCert: foreign.leaf(t, []string{idB.String()}, nil),
			wantClient: "certificate signed by unknown authority",
		},
		{
			name:       "expired client certificate",
			clientCert: mesh.leaf(t, []string{idA.String()}, expired),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			wantClient: "bad certificate",
			wantServer: "expired",
		},
		{
			name:       "expired server certificate",
			clientCert: mesh.leaf(t, []string{idA.String()}, nil),
			serverCert: mesh.leaf(t, []string{idB.String()}, expired),
			wantClient: "expired",
		},
		{
			name:       "no client certificate",
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			wantClient: "certificate required",
			wantServer: "client didn't provide a certificate",
		},
		{
			name:       "client with two URI SANs",
			clientCert: mesh.leaf(t, []string{idA.String(), idC.String()}, nil),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			wantClient: "bad certificate",
			wantServer: "more than one URI SAN",
		},
		{
			name:       "client with a non-SPIFFE URI SAN",
			clientCert: mesh.leaf(t, []string{"https://example.com/a"}, nil),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			wantClient: "bad certificate",
			wantServer: "scheme is missing or invalid",
		},
		{
			name:       "client without URI SAN",
			clientCert: mesh.leaf(t, nil, func(c *x509.Certificate) { c.DNSNames = []string{"a.example"} }),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			wantClient: "bad certificate",
			wantServer: "no URI SAN",
		},
		{
			name:       "server cannot get the picked certificate",
			clientCert: mesh.leaf(t, []string{idA.String()}, nil),
			serverCert: mesh.leaf(t, []string{idB.String()}, nil),
			serverPick: idC,
			wantClient: "internal error",
			wantServer: "server certificate " + idC.String(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientSrc := &staticSource{certs: map[spiffeid.ID]*tls.Certificate{}, bundle: bundle}
			if tt.clientCert != nil {
				clientSrc.certs[idA] = tt.clientCert
			}
			serverSrc := &staticSource{certs: map[spiffeid.ID]*tls.Certificate{idB: tt.serverCert}, bundle: bundle}
			ccfg := identity.ClientTLSConfig(clientSrc, idA, idB)
			if tt.clientCert == nil {
				ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return &tls.Certificate{}, nil // send none
				}
			}
			pick := idB
			if !tt.serverPick.IsZero() {
				pick = tt.serverPick
			}
			client, server := handshake(t, ccfg, identity.ServerTLSConfig(serverSrc, meshTD, pickID(pick)))
			checkSides(t, client, server, tt.wantClient, tt.wantServer)
		})
	}
}

func TestVerifyPeerNotYetValid(t *testing.T) {
	mesh := newTestRoot(t)
	bundle := x509bundle.FromX509Authorities(meshTD, []*x509.Certificate{mesh.cert})
	c := mesh.leaf(t, []string{idA.String()}, nil)
	if id, err := identity.VerifyPeer([]*x509.Certificate{c.Leaf}, bundle, meshTD, x509.ExtKeyUsageClientAuth, time.Now()); err != nil || id != idA {
		t.Fatalf("VerifyPeer = %v, %v; want %s", id, err, idA)
	}
	_, err := identity.VerifyPeer([]*x509.Certificate{c.Leaf}, bundle, meshTD, x509.ExtKeyUsageClientAuth, time.Now().Add(-2*time.Hour))
	if err == nil || !strings.Contains(err.Error(), "not valid before") {
		t.Fatalf("VerifyPeer before NotBefore: %v", err)
	}
	if _, err := identity.VerifyPeer(nil, bundle, meshTD, x509.ExtKeyUsageClientAuth, time.Now()); err == nil {
		t.Fatal("VerifyPeer(no certificates) succeeded")
	}
}

func TestPeerIDErrors(t *testing.T) {
	if _, err := identity.PeerID(tls.ConnectionState{}); err == nil {
		t.Fatal("PeerID before handshake succeeded")
	}
	if _, err := identity.PeerID(tls.ConnectionState{HandshakeComplete: true}); err == nil {
		t.Fatal("PeerID without peer certificates succeeded")
	}
	if !errors.Is(fmt.Errorf("x: %w", identity.ErrNotAuthorized), identity.ErrNotAuthorized) {
		t.Fatal("sentinel wrapping broken")
	}
}

// asyncConn makes writes on a net.Pipe end non-blocking: without it, a side
// that fails verification halfway through reading the peer's flight would
// block sending its alert while the peer blocks finishing that flight.
type asyncConn struct {
	net.Conn
	mu     sync.Mutex
	buf    []byte
	wake   chan struct{}
	closed chan struct{}
	once   sync.Once
	done   chan struct{}
}

func newAsyncConn(c net.Conn) *asyncConn {
	a := &asyncConn{Conn: c, wake: make(chan struct{}, 1), closed: make(chan struct{}), done: make(chan struct{})}
	go a.pump()
	return a
}

func (a *asyncConn) pump() {
	defer close(a.done)
	for {
		a.mu.Lock()
		b := a.buf
		a.buf = nil
		a.mu.Unlock()
		if len(b) > 0 {
			if _, err := a.Conn.Write(b); err != nil {
				return
			}
			continue
		}
		select {
		case <-a.wake:
		case <-a.closed:
			return
		}
	}
}

func (a *asyncConn) Write(b []byte) (int, error) {
	select {
	case <-a.closed:
		return 0, net.ErrClosed
	default:
	}
	a.mu.Lock()
	a.buf = append(a.buf, b...)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return len(b), nil
}

// Close flushes what was written (unless the peer is gone) and closes.
func (a *asyncConn) Close() error {
	a.once.Do(func() {
		close(a.closed)
		a.mu.Lock()
		rest := a.buf
		a.buf = nil
		a.mu.Unlock()
		go func() {
			<-a.done
			if len(rest) > 0 {
				a.Conn.SetWriteDeadline(time.Now().Add(time.Second))
				a.Conn.Write(rest)
			}
			a.Conn.Close()
		}()
	})
	return nil
}
