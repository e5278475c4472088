package hbone

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Throwaway test PKI: an ECDSA P-256 CA and leaves with one SPIFFE URI SAN.

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool

	mu     sync.Mutex
	leaves map[string]tls.Certificate
}

var (
	caOnce   sync.Once
	sharedCA *testCA
)

func theCA(tb testing.TB) *testCA {
	tb.Helper()
	caOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "hbone test ca"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(cert)
		sharedCA = &testCA{cert: cert, key: key, pool: pool, leaves: map[string]tls.Certificate{}}
	})
	return sharedCA
}

func (ca *testCA) leaf(tb testing.TB, id spiffeid.ID) tls.Certificate {
	tb.Helper()
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c, ok := ca.leaves[id.String()]; ok {
		return c
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	u, _ := url.Parse(id.String())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	c := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	ca.leaves[id.String()] = c
	return c
}

// verifyPeer checks the chain against the CA and returns the peer's SPIFFE ID.
func (ca *testCA) verifyPeer(raw [][]byte) (spiffeid.ID, error) {
	if len(raw) == 0 {
		return spiffeid.ID{}, errors.New("no peer certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, b := range raw {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return spiffeid.ID{}, err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots: ca.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return spiffeid.ID{}, err
	}
	return x509svid.IDFromCert(certs[0])
}

// clientTLS: presents src, accepts the server only if its URI SAN == dst.
func (ca *testCA) clientTLS(tb testing.TB, src, dst spiffeid.ID) *tls.Config {
	cert := ca.leaf(tb, src)
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // verified below by SPIFFE ID, not hostname
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := ca.verifyPeer(raw)
			if err != nil {
				return err
			}
			if id != dst {
				return fmt.Errorf("server identity %s, want %s", id, dst)
			}
			return nil
		},
	}
}

// serverTLS: presents id, requires a client certificate from the trust domain.
func (ca *testCA) serverTLS(tb testing.TB, id spiffeid.ID) *tls.Config {
	cert := ca.leaf(tb, id)
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			peer, err := ca.verifyPeer(raw)
			if err != nil {
				return err
			}
			if !peer.MemberOf(id.TrustDomain()) {
				return fmt.Errorf("client %s is not in trust domain %s", peer, id.TrustDomain())
			}
			return nil
		},
	}
}

var (
	idClient = spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y")
	idServer = spiffeid.RequireFromString("spiffe://cluster.local/ns/srv/sa/echo")
	idOther  = spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/z")
)

// leafNoURI issues a client certificate without a SPIFFE ID.
func (ca *testCA) leafNoURI(tb testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "no-spiffe"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
