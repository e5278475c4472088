package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const alpnH2 = "h2"

// hboneTLS returns a copy of cfg pinned to what HBONE requires: TLS 1.3 and
// ALPN h2. Large records are always used: the tunnel carries bulk data.
func hboneTLS(cfg *tls.Config) *tls.Config {
	c := cfg.Clone()
	c.MinVersion = tls.VersionTLS13
	if c.MaxVersion != 0 && c.MaxVersion < tls.VersionTLS13 {
		c.MaxVersion = tls.VersionTLS13
	}
	c.NextProtos = []string{alpnH2}
	c.DynamicRecordSizingDisabled = true
	if get := cfg.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			inner, err := get(hello)
			if err != nil || inner == nil {
				return inner, err
			}
			out := inner.Clone()
			out.MinVersion = tls.VersionTLS13
			if out.MaxVersion != 0 && out.MaxVersion < tls.VersionTLS13 {
				out.MaxVersion = tls.VersionTLS13
			}
			out.NextProtos = []string{alpnH2}
			out.DynamicRecordSizingDisabled = true
			return out, nil
		}
	}
	return c
}

// peerIdentity extracts the SPIFFE ID of the verified peer leaf certificate.
func peerIdentity(st tls.ConnectionState) (spiffeid.ID, []*x509.Certificate, error) {
	certs := st.PeerCertificates
	if len(certs) == 0 {
		return spiffeid.ID{}, nil, fmt.Errorf("peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return spiffeid.ID{}, certs, fmt.Errorf("peer spiffe id: %w", err)
	}
	return id, certs, nil
}

func checkNegotiated(st tls.ConnectionState) error {
	if st.Version != tls.VersionTLS13 {
		return fmt.Errorf("negotiated tls version %#x, want tls 1.3", st.Version)
	}
	if st.NegotiatedProtocol != alpnH2 {
		return fmt.Errorf("negotiated alpn %q, want %q", st.NegotiatedProtocol, alpnH2)
	}
	return nil
}
