package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/hbone"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/tests/mesh"
)

var td = spiffeid.RequireTrustDomainFromString(mesh.TrustDomain)

func meshID(sa string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/mesh/sa/"+sa) }

func meshRoots(t *testing.T) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(m.CARoot())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	root, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{root}
}

// issue obtains a real mesh certificate from the running CA as the given node.
func issue(t *testing.T, node string, id spiffeid.ID) (*tls.Certificate, error) {
	t.Helper()
	cl, err := ca.NewClient(ca.ClientConfig{Addr: "unix://" + m.CASocket(), TokenFile: m.TokenFile(node), Roots: meshRoots(t)})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	chain, _, err := cl.Issue(ctx, id, csr)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}

// foreignCert makes a certificate for id signed by a CA that is not the mesh's.
func foreignCert(t *testing.T, id spiffeid.ID) *tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "evil root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{id.URL()},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key, Leaf: leaf}
}

// The CA gives a node only identities of workloads the model places on it.
func TestCANodeScoped(t *testing.T) {
	requireMesh(t)
	if _, err := issue(t, "node3", meshID("rogue")); err != nil {
		t.Fatalf("node3 asking for its own workload's identity: %v", err)
	}
	_, err := issue(t, "node3", meshID("echo"))
	if !errors.Is(err, identity.ErrNotAuthorized) {
		t.Fatalf("node3 asking for node2's identity: err %v, want ErrNotAuthorized", err)
	}
}

// impostor serves HBONE at the target pod's address with the given certificate, counting
// streams that reach it.
func impostor(t *testing.T, cert *tls.Certificate) *atomic.Int32 {
	t.Helper()
	var streams atomic.Int32
	ln, err := target.Listen("tcp", netip.AddrPortFrom(target.IP, 15008).String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
			Certificates: []tls.Certificate{*cert}, ClientAuth: tls.RequireAnyClientCert,
		},
		Handler: hbone.HandlerFunc(func(s *hbone.Stream) {
			streams.Add(1)
			_ = s.Reject(503, "impostor")
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); ln.Close() })
	return &streams
}

// A destination presenting a valid mesh certificate for another identity is refused.
func TestWrongIdentityRefused(t *testing.T) {
	requireMesh(t)
	cert, err := issue(t, "node3", meshID("rogue"))
	if err != nil {
		t.Fatal(err)
	}
	streams := impostor(t, cert)
	dialFails(t, client, podAddr(target))
	if n := streams.Load(); n != 0 {
		t.Fatalf("ztunnel opened %d streams to a server with the wrong identity", n)
	}
}

// A destination with the right SPIFFE ID from another CA (trust domain) is refused.
func TestForeignCertificateRefused(t *testing.T) {
	requireMesh(t)
	streams := impostor(t, foreignCert(t, meshID("target")))
	dialFails(t, client, podAddr(target))
	if n := streams.Load(); n != 0 {
		t.Fatalf("ztunnel opened %d streams to a server with a foreign certificate", n)
	}
}

// rogueDial connects from node3 to echo-a's HBONE port as a client with cert.
func rogueDial(t *testing.T, cert *tls.Certificate, fwd netip.AddrPort) (net.Conn, error) {
	t.Helper()
	node3 := m.Topo.Nodes[2]
	pool, err := hbone.NewPool(hbone.ClientConfig{
		Dial: node3.DialContext,
		TLSConfig: func(src, dst spiffeid.ID) (*tls.Config, error) {
			return &tls.Config{
				MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
				Certificates: []tls.Certificate{*cert}, InsecureSkipVerify: true,
			}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pool.Dial(ctx, hbone.Request{
		Addr:      netip.AddrPortFrom(echoA.IP, 15008).String(),
		Authority: podAddr(echoA).String(),
		Src:       leafID(t, cert),
		Dst:       meshID("echo"),
		Forwarded: fwd,
	})
}

func leafID(t *testing.T, c *tls.Certificate) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromURI(c.Leaf.URIs[0])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A client certificate from another CA is refused by ztunnel's HBONE server.
func TestForeignClientRefused(t *testing.T) {
	requireMesh(t)
	c, err := rogueDial(t, foreignCert(t, meshID("client")), netip.AddrPortFrom(client.IP, 40000))
	if err == nil {
		c.Close()
		t.Fatal("ztunnel accepted an HBONE client with a foreign certificate")
	}
}

// A valid mesh client claiming another pod's address in Forwarded is served, but not from
// that address: the destination sees the node, not the spoofed pod.
func TestForgedForwardedIgnored(t *testing.T) {
	requireMesh(t)
	cert, err := issue(t, "node3", meshID("rogue"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := rogueDial(t, cert, netip.AddrPortFrom(client.IP, 40001))
	if err != nil {
		t.Fatalf("rogue mesh client: %v", err)
	}
	defer c.Close()
	msg := []byte("spoof?")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if got := lastPeer(t, "echo-a"); got == client.IP {
		t.Fatalf("echo-a saw the forged source %s", got)
	}
}

// meshSigned makes a certificate for id with key, signed by the mesh CA's own root
// (read from the CA's state directory) with the usages the CA gives its leaves, so
// that only the key differs from what the CA would issue.
func meshSigned(t *testing.T, id spiffeid.ID, key crypto.Signer) *tls.Certificate {
	t.Helper()
	root := meshRoots(t)[0]
	data, err := os.ReadFile(filepath.Join(filepath.Dir(m.CARoot()), ca.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("root key: no PEM block")
	}
	rootKey, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{id.URL()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// rsaCases: the refused key size, and the smallest accepted one as the control.
var rsaCases = []struct {
	bits int
	ok   bool
}{{1024, false}, {2048, true}}

func rsaKey(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A mesh client whose certificate the mesh CA signed but whose key is RSA-1024 is
// refused by ztunnel's HBONE server at the handshake; the same certificate with an
// RSA-2048 key is served, so the key size is what was refused.
func TestRSA1024ClientRefused(t *testing.T) {
	requireMesh(t)
	for _, tt := range rsaCases {
		t.Run(fmt.Sprintf("rsa%d", tt.bits), func(t *testing.T) {
			cert := meshSigned(t, meshID("rogue"), rsaKey(t, tt.bits))
			c, err := rogueDial(t, cert, netip.AddrPortFrom(client.IP, 40002))
			if !tt.ok {
				if err == nil {
					c.Close()
					t.Fatal("ztunnel accepted an HBONE client with an RSA-1024 certificate")
				}
				// The node says why only in its debug log; the client sees the alert.
				if !strings.Contains(err.Error(), "bad certificate") {
					t.Fatalf("dial error %v, want the server's bad certificate alert", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("HBONE client with an RSA-%d certificate: %v", tt.bits, err)
			}
			defer c.Close()
			msg := []byte("rsa2048")
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A destination presenting an RSA-1024 certificate for the right identity, signed by
// the mesh CA, is refused; with an RSA-2048 key ztunnel opens the stream.
func TestRSA1024ServerRefused(t *testing.T) {
	requireMesh(t)
	for _, tt := range rsaCases {
		t.Run(fmt.Sprintf("rsa%d", tt.bits), func(t *testing.T) {
			streams := impostor(t, meshSigned(t, meshID("target"), rsaKey(t, tt.bits)))
			dialFails(t, client, podAddr(target)) // the impostor answers 503 to any stream
			switch n := streams.Load(); {
			case !tt.ok && n != 0:
				t.Fatalf("ztunnel opened %d streams to a server with an RSA-1024 certificate", n)
			case tt.ok && n == 0:
				t.Fatal("ztunnel opened no stream to a server with an RSA-2048 certificate")
			}
			if !tt.ok {
				waitLogged(t, "node1", "rsa key of 1024 bits, want >= 2048")
			}
		})
	}
	// Leave no pooled connection to the impostor for later tests.
	waitPoolEmpty(t, m.Topo.Nodes[0])
}

// waitLogged waits until the node's ztunnel has logged a refusal containing text
// (its refusal line may follow the client's view of the refusal by a moment).
func waitLogged(t *testing.T, node, text string) {
	t.Helper()
	waitLog(t, node, text, `msg="connection refused"`)
}
