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

// ALPN protocol spoken over HBONE connections.
const alpnH2 = "h2"

// ClientTLSConfig returns an HBONE client configuration (TLS 1.3 only, ALPN h2)
// that presents self's certificate, fetched from src at handshake time, and
// accepts the server only if its chain verifies against the bundle of dst's
// trust domain and its single URI SAN is exactly dst.
func ClientTLSConfig(src Source, self, dst spiffeid.ID) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
		// Standard hostname verification does not apply to SPIFFE; the chain is
		// verified in VerifyConnection instead.
		InsecureSkipVerify: true,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := src.Certificate(cri.Context(), self)
			if err != nil {
				return nil, fmt.Errorf("client certificate %s: %w", self, err)
			}
			return c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := VerifyPeer(cs.PeerCertificates, src, dst.TrustDomain(), time.Now())
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
// connection, and requires a client certificate that chains to the bundle of
// td and has exactly one SPIFFE URI SAN in td.
func ServerTLSConfig(src Source, td spiffeid.TrustDomain, pick func(*tls.ClientHelloInfo) (spiffeid.ID, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
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
			return c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := VerifyPeer(cs.PeerCertificates, src, td, time.Now()); err != nil {
				return fmt.Errorf("verify client: %w", err)
			}
			return nil
		},
	}
}

// VerifyPeer verifies a peer's chain (leaf first) against the bundle of td
// from bundles at time now and returns the leaf's SPIFFE ID. The leaf must
// have exactly one URI SAN, a SPIFFE ID in td.
func VerifyPeer(certs []*x509.Certificate, bundles x509bundle.Source, td spiffeid.TrustDomain, now time.Time) (spiffeid.ID, error) {
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
	if _, _, err := x509svid.Verify(certs, bundles, x509svid.WithTime(now)); err != nil {
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
