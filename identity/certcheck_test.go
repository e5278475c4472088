package identity_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

// keys made once for the package: RSA generation is slow.
var testKeys = sync.OnceValue(func() map[string]crypto.Signer {
	out := map[string]crypto.Signer{}
	for name, bits := range map[string]int{"rsa1024": 1024, "rsa1536": 1536, "rsa2048": 2048} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			panic(err)
		}
		out[name] = k
	}
	for name, c := range map[string]elliptic.Curve{"p224": elliptic.P224(), "p256": elliptic.P256(), "p384": elliptic.P384(), "p521": elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			panic(err)
		}
		out[name] = k
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	out["ed25519"] = ed
	return out
})

func eku(us ...x509.ExtKeyUsage) func(*x509.Certificate) {
	return func(c *x509.Certificate) { c.ExtKeyUsage = us }
}

// certCase is a leaf (and its chain) with what each verifying side must say of
// it: as a client certificate (checked by a server) and as a server certificate
// (checked by a client). "" means accepted.
type certCase struct {
	name                   string
	cert                   *tls.Certificate
	wantAsClient, wantAsSv string
}

// certCases covers key strength, extended key usage, URI SANs and
// intermediates; every leaf is for idB, signed (directly or through an
// intermediate) by mesh.
func certCases(t *testing.T, mesh *testRoot) []certCase {
	k := testKeys()
	b := []string{idB.String()}
	both := func(want string) (string, string) { return want, want }
	c := func(name string, cert *tls.Certificate, asClient, asServer string) certCase {
		return certCase{name, cert, asClient, asServer}
	}
	var out []certCase
	add := func(cc certCase) { out = append(out, cc) }
	for _, name := range []string{"rsa2048", "p256", "p384", "p521", "ed25519"} {
		add(c(name+" ok", mesh.leafKey(t, k[name], b, nil), "", ""))
	}
	ac, as := both("rsa key of 1024 bits, want >= 2048")
	add(c("rsa1024 refused", mesh.leafKey(t, k["rsa1024"], b, nil), ac, as))
	ac, as = both("rsa key of 1536 bits, want >= 2048")
	add(c("rsa1536 refused", mesh.leafKey(t, k["rsa1536"], b, nil), ac, as))
	ac, as = both("ecdsa key on curve P-224, want P-256, P-384 or P-521")
	add(c("p224 refused", mesh.leafKey(t, k["p224"], b, nil), ac, as))

	add(c("serverAuth only", mesh.leaf(t, b, eku(x509.ExtKeyUsageServerAuth)),
		"extended key usage does not allow client authentication", ""))
	add(c("clientAuth only", mesh.leaf(t, b, eku(x509.ExtKeyUsageClientAuth)),
		"", "extended key usage does not allow server authentication"))
	add(c("any usage ok", mesh.leaf(t, b, eku(x509.ExtKeyUsageAny)), "", ""))
	add(c("no extended key usage ok", mesh.leaf(t, b, eku()), "", ""))
	add(c("code signing only", mesh.leaf(t, b, eku(x509.ExtKeyUsageCodeSigning)),
		"does not allow client authentication", "does not allow server authentication"))
	add(c("unknown usage only", mesh.leaf(t, b, func(c *x509.Certificate) {
		c.ExtKeyUsage, c.UnknownExtKeyUsage = nil, []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 99999, 1}}
	}), "does not allow client authentication", "does not allow server authentication"))

	ac, as = both("no URI SAN")
	add(c("no URI SAN", mesh.leaf(t, nil, func(c *x509.Certificate) { c.DNSNames = []string{"b.example"} }), ac, as))
	ac, as = both("more than one URI SAN")
	add(c("two URI SANs", mesh.leaf(t, []string{idB.String(), idC.String()}, nil), ac, as))

	add(c("strong intermediate ok", mesh.sub(t, "good intermediate", k["p384"], nil).leaf(t, b, nil), "", ""))
	ac, as = both(`intermediate "CN=weak intermediate": rsa key of 1024 bits, want >= 2048`)
	add(c("rsa1024 intermediate refused", mesh.sub(t, "weak intermediate", k["rsa1024"], nil).leaf(t, b, nil), ac, as))
	add(c("serverAuth-only intermediate", mesh.sub(t, "server intermediate", k["p256"], eku(x509.ExtKeyUsageServerAuth)).leaf(t, b, nil),
		`intermediate "CN=server intermediate": extended key usage does not allow client authentication`, ""))
	return out
}

// TestVerifyPeerCertificates checks every case against VerifyPeer directly, for
// both usages.
func TestVerifyPeerCertificates(t *testing.T) {
	mesh := newTestRoot(t)
	bundle := x509bundle.FromX509Authorities(meshTD, []*x509.Certificate{mesh.cert})
	cases := certCases(t, mesh)
	cases = append(cases, certCase{"ca as leaf",
		mesh.leaf(t, []string{idB.String()}, func(c *x509.Certificate) {
			c.IsCA, c.BasicConstraintsValid, c.KeyUsage = true, true, x509.KeyUsageCertSign
		}), "is a CA certificate", "is a CA certificate"})
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			for _, u := range []struct {
				usage x509.ExtKeyUsage
				want  string
			}{{x509.ExtKeyUsageClientAuth, tt.wantAsClient}, {x509.ExtKeyUsageServerAuth, tt.wantAsSv}} {
				id, err := identity.VerifyPeer(chainOf(t, tt.cert), bundle, meshTD, u.usage, time.Now())
				checkErr(t, "VerifyPeer", err, u.want)
				if err == nil && id != idB {
					t.Errorf("VerifyPeer = %s, want %s", id, idB)
				}
			}
		})
	}
}

// TestHandshakeCertificates runs every case through a real handshake: the
// certificate is presented by a side that skips its own checks, and the other
// side (an identity configuration) must refuse or accept it.
func TestHandshakeCertificates(t *testing.T) {
	mesh := newTestRoot(t)
	bundle := x509bundle.FromX509Authorities(meshTD, []*x509.Certificate{mesh.cert})
	good := map[spiffeid.ID]*tls.Certificate{idA: mesh.leaf(t, []string{idA.String()}, nil), idB: mesh.leaf(t, []string{idB.String()}, nil)}
	src := &staticSource{certs: good, bundle: bundle}
	for _, tt := range certCases(t, mesh) {
		t.Run(tt.name, func(t *testing.T) {
			as := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tt.cert, nil }
			wantServer, wantClient := tt.wantAsClient, tt.wantAsSv
			if strings.HasPrefix(tt.name, "p224") {
				// crypto/tls has no TLS 1.3 signature scheme for P-224: a server
				// with such a key fails before the client sees its certificate.
				wantClient = "handshake failure"
			}

			t.Run("as client", func(t *testing.T) {
				ccfg := identity.ClientTLSConfig(src, idA, idA)
				ccfg.GetClientCertificate = as
				client, server := handshake(t, ccfg, identity.ServerTLSConfig(src, meshTD, pickID(idA)))
				checkErr(t, "server", server.err, wantServer)
				if wantServer == "" && client.err != nil {
					t.Errorf("client: %v", client.err)
				}
				if wantServer == "" {
					if got, err := identity.PeerID(server.state); err != nil || got != idB {
						t.Errorf("server PeerID = %v, %v; want %s", got, err, idB)
					}
				}
			})
			t.Run("as server", func(t *testing.T) {
				scfg := identity.ServerTLSConfig(src, meshTD, pickID(idA))
				scfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return tt.cert, nil }
				client, server := handshake(t, identity.ClientTLSConfig(src, idA, idB), scfg)
				checkErr(t, "client", client.err, wantClient)
				if wantClient == "" && server.err != nil {
					t.Errorf("server: %v", server.err)
				}
			})
		})
	}
}

// TestOwnCertificateRefused: a node does not present a certificate its peers
// would refuse, whatever its source holds.
func TestOwnCertificateRefused(t *testing.T) {
	mesh := newTestRoot(t)
	bundle := x509bundle.FromX509Authorities(meshTD, []*x509.Certificate{mesh.cert})
	k := testKeys()
	okA, okB := mesh.leaf(t, []string{idA.String()}, nil), mesh.leaf(t, []string{idB.String()}, nil)
	noLeaf := *mesh.leafKey(t, k["rsa1024"], []string{idA.String()}, nil)
	noLeaf.Leaf = nil // a source that did not parse it
	tests := []struct {
		name               string
		client, server     *tls.Certificate
		wantClient, wantSv string
	}{
		{"ok", okA, okB, "", ""},
		{"weak client key", mesh.leafKey(t, k["rsa1024"], []string{idA.String()}, nil), okB,
			"client certificate " + idA.String() + ": rsa key of 1024 bits, want >= 2048", ""},
		{"weak client key, leaf not parsed", &noLeaf, okB, "rsa key of 1024 bits", ""},
		{"client curve", mesh.leafKey(t, k["p224"], []string{idA.String()}, nil), okB,
			"client certificate " + idA.String() + ": ecdsa key on curve P-224", ""},
		{"client without clientAuth", mesh.leaf(t, []string{idA.String()}, eku(x509.ExtKeyUsageServerAuth)), okB,
			"client certificate " + idA.String() + ": extended key usage does not allow client authentication", ""},
		{"weak server key", okA, mesh.leafKey(t, k["rsa1536"], []string{idB.String()}, nil),
			"internal error", "server certificate " + idB.String() + ": rsa key of 1536 bits, want >= 2048"},
		{"server without serverAuth", okA, mesh.leaf(t, []string{idB.String()}, eku(x509.ExtKeyUsageClientAuth)),
			"internal error", "server certificate " + idB.String() + ": extended key usage does not allow server authentication"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csrc := &staticSource{certs: map[spiffeid.ID]*tls.Certificate{idA: tt.client}, bundle: bundle}
			ssrc := &staticSource{certs: map[spiffeid.ID]*tls.Certificate{idB: tt.server}, bundle: bundle}
			client, server := handshake(t, identity.ClientTLSConfig(csrc, idA, idB), identity.ServerTLSConfig(ssrc, meshTD, pickID(idB)))
			checkSides(t, client, server, tt.wantClient, tt.wantSv)
		})
	}
}

func TestCheckOwnChain(t *testing.T) {
	mesh := newTestRoot(t)
	k := testKeys()
	inter := mesh.sub(t, "inter", k["p256"], nil)
	tests := []struct {
		name  string
		chain []*x509.Certificate
		want  string
	}{
		{"ok", chainOf(t, mesh.leaf(t, []string{idA.String()}, nil)), ""},
		{"ok through an intermediate", chainOf(t, inter.leaf(t, []string{idA.String()}, nil)), ""},
		{"no extended key usage", chainOf(t, mesh.leaf(t, []string{idA.String()}, eku())), ""},
		{"serverAuth only", chainOf(t, mesh.leaf(t, []string{idA.String()}, eku(x509.ExtKeyUsageServerAuth))), "does not allow client authentication"},
		{"clientAuth only", chainOf(t, mesh.leaf(t, []string{idA.String()}, eku(x509.ExtKeyUsageClientAuth))), "does not allow server authentication"},
		{"weak leaf", chainOf(t, mesh.leafKey(t, k["rsa1024"], []string{idA.String()}, nil)), "rsa key of 1024 bits"},
		{"weak intermediate", chainOf(t, mesh.sub(t, "weak", k["rsa1536"], nil).leaf(t, []string{idA.String()}, nil)), `intermediate "CN=weak": rsa key of 1536 bits`},
		{"empty", nil, "empty certificate chain"},
		{"nil certificate", []*x509.Certificate{nil}, "certificate 0 of the chain is nil"},
		{"unsupported key type", []*x509.Certificate{{PublicKey: "not a key"}}, "unsupported key type string"},
		{"empty rsa key", []*x509.Certificate{{PublicKey: &rsa.PublicKey{}}}, "empty rsa key"},
		{"empty ecdsa key", []*x509.Certificate{{PublicKey: &ecdsa.PublicKey{}}}, "empty ecdsa key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, "CheckOwnChain", identity.CheckOwnChain(tt.chain), tt.want)
		})
	}
}

// checkErr expects err to contain want, or to be nil if want is "".
func checkErr(tb testing.TB, who string, err error, want string) {
	tb.Helper()
	switch {
	case want == "" && err != nil:
		tb.Errorf("%s: unexpected error %v", who, err)
	case want != "" && err == nil:
		tb.Errorf("%s: succeeded, want error containing %q", who, want)
	case want != "" && !strings.Contains(err.Error(), want):
		tb.Errorf("%s: error %q, want it to contain %q", who, err, want)
	}
}

// checkSides checks both ends of a handshake. When only the client is expected
// to fail, the server must fail too, with whatever alert the client sent.
func checkSides(tb testing.TB, client, server side, wantClient, wantServer string) {
	tb.Helper()
	checkErr(tb, "client", client.err, wantClient)
	switch {
	case wantServer != "" || wantClient == "":
		checkErr(tb, "server", server.err, wantServer)
	case server.err == nil:
		tb.Error("server: succeeded although the client refused")
	}
}
