package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN is the application protocol negotiated on HBONE connections (HTTP/2).
const ALPN = "h2"

// ClientTLSConfig returns an HBONE client configuration (TLS 1.3 only, ALPN h2)
// that presents self's certificate, fetched from src at handshake time (and
// refused if its key is weak or it does not allow client authentication), and
// accepts the server only if VerifyPeer accepts it for server authentication
// in dst's trust domain and its single URI SAN is exactly dst.
func ClientTLSConfig(src Source, self, dst spiffeid.ID) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// Standard hostname verification does not apply to SPIFFE; the chain is
		// verified in VerifyConnection instead.
		InsecureSkipVerify: true,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := src.Certificate(cri.Context(), self)
			if err != nil {
				return nil, fmt.Errorf("client certificate %s: %w", self, err)
			}
			if err := checkPresented(c, x509.ExtKeyUsageClientAuth); err != nil {
				return nil, fmt.Errorf("client certificate %s: %w", self, err)
			}
			return c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := VerifyPeer(cs.PeerCertificates, src, dst.TrustDomain(), x509.ExtKeyUsageServerAuth, time.Now())
			if err != nil {
				return fmt.Errorf("verify server: %w", err)
			}
			if got != dst {
				return fmt.Errorf("verify server: identity %s, want %s", got, dst)
			}
			return nil
		},
	}
}

// ServerTLSConfig returns an HBONE server configuration (TLS 1.3 only, ALPN h2)
// that presents the certificate of the identity chosen by pick for each
// connection (refused if its key is weak or it does not allow server
// authentication), and requires a client certificate that VerifyPeer accepts
// for client authentication in td.
func ServerTLSConfig(src Source, td spiffeid.TrustDomain, pick func(*tls.ClientHelloInfo) (spiffeid.ID, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		ClientAuth: tls.RequireAnyClientCert,
		// Without resumption every connection's peer is verified afresh.
		SessionTicketsDisabled: true,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if pick == nil {
				return nil, errors.New("choose server identity: no picker configured")
			}
			id, err := pick(hello)
			if err != nil {
				return nil, fmt.Errorf("choose server identity: %w", err)
			}
			c, err := src.Certificate(hello.Context(), id)
			if err != nil {
				return nil, fmt.Errorf("server certificate %s: %w", id, err)
			}
			if err := checkPresented(c, x509.ExtKeyUsageServerAuth); err != nil {
				return nil, fmt.Errorf("server certificate %s: %w", id, err)
			}
			return c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := VerifyPeer(cs.PeerCertificates, src, td, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
				return fmt.Errorf("verify client: %w", err)
			}
			return nil
		},
	}
}

// VerifyPeer verifies a peer's chain (leaf first) for usage (client or server
// authentication) against the bundle of td from bundles at time now and
// returns the leaf's SPIFFE ID. The leaf must have exactly one URI SAN, a
// SPIFFE ID in td, and must not be a CA. Every presented certificate must
// have a strong key (RSA >= 2048 bits; ECDSA P-256, P-384 or P-521; Ed25519)
// and an extended key usage that allows usage, or none; the chain is verified
// by crypto/x509 with usage as the required key usage.
func VerifyPeer(certs []*x509.Certificate, bundles x509bundle.Source, td spiffeid.TrustDomain, usage x509.ExtKeyUsage, now time.Time) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, errors.New("peer presented no certificate")
	}
	leaf := certs[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer identity: %w", err)
	}
	if !id.MemberOf(td) {
		return spiffeid.ID{}, fmt.Errorf("peer identity %s is not in trust domain %q", id, td)
	}
	if now.Before(leaf.NotBefore) {
		return spiffeid.ID{}, fmt.Errorf("peer certificate %s not valid before %s", id, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(leaf.NotAfter) {
		return spiffeid.ID{}, fmt.Errorf("peer certificate %s expired at %s", id, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	// An X509-SVID leaf is never a CA (SPIFFE X509-SVID section 4.3).
	if leaf.IsCA || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return spiffeid.ID{}, fmt.Errorf("peer certificate %s is a CA certificate, not a leaf", id)
	}
	// Before any signature is checked: cheap, and it names the problem.
	if err := checkChain(certs, usage); err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer certificate %s: %w", id, err)
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer certificate %s: trust bundle: %w", id, err)
	}
	opts := x509.VerifyOptions{
		Roots:       x509.NewCertPool(),
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{usage},
	}
	for _, r := range bundle.X509Authorities() {
		opts.Roots.AddCert(r)
	}
	if len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	if _, err := leaf.Verify(opts); err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer certificate %s: %w", id, err)
	}
	return id, nil
}

// PeerID returns the SPIFFE ID of the peer's leaf certificate on a connection
// whose handshake used a configuration from this package (which verified it).
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, errors.New("peer id: handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("peer id: peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer id: %w", err)
	}
	return id, nil
}
