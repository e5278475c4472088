package kubetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ambitmesh/ambit/tests/testpki"
)

// certTTL is the life of the cluster's test credentials.
const certTTL = 365 * 24 * time.Hour

// pki is the cluster's test credentials: one CA signs the serving cert and client certs.
type pki struct {
	caPEM    []byte
	servePEM []byte // serving cert
	serveKey []byte
	adminPEM []byte // system:masters client cert
	adminKey []byte
	saKey    []byte // service-account token signing key (private)
	saPub    []byte
}

func newPKI(bind netip.Addr) (*pki, error) {
	ca, err := testpki.NewCA("kubetest-ca", certTTL)
	if err != nil {
		return nil, err
	}
	p := &pki{caPEM: ca.CertPEM}

	ips := []net.IP{net.IP(bind.AsSlice()), net.IPv4(127, 0, 0, 1), net.IPv4(198, 19, 0, 1)}
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	serve, err := ca.Issue(pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth, ips, dns, certTTL)
	if err != nil {
		return nil, fmt.Errorf("issue serving cert: %w", err)
	}
	p.servePEM, p.serveKey = serve.CertPEM, serve.KeyPEM
	adminName := pkix.Name{CommonName: "kubetest-admin", Organization: []string{"system:masters"}}
	admin, err := ca.Issue(adminName, x509.ExtKeyUsageClientAuth, nil, nil, certTTL)
	if err != nil {
		return nil, fmt.Errorf("issue admin cert: %w", err)
	}
	p.adminPEM, p.adminKey = admin.CertPEM, admin.KeyPEM

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate service-account signing key: %w", err)
	}
	if p.saKey, err = testpki.KeyPEM(saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, fmt.Errorf("marshal service-account public key: %w", err)
	}
	p.saPub = testpki.PEM("PUBLIC KEY", pub)
	return p, nil
}
