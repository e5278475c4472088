package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const alpnH2 = "h2"

// hboneTLS returns a copy of cfg pinned to what HBONE requires: TLS 1.3 and ALPN h2.
// Session tickets are off: HBONE connections are not resumed, and a ticket crypto/tls
// sent after the handshake would use record sequence numbers the own record layer
// (which takes over once the handshake is done, see record.go) does not know about. On
// the server side every handshake gets its own copy of the configuration, whose key log
// feeds that connection's own record layer (with RecordsCryptoTLS nothing reads it).
func hboneTLS(cfg *tls.Config) *tls.Config {
	pin := func(c *tls.Config) *tls.Config {
		c.MinVersion = tls.VersionTLS13
		if c.MaxVersion != 0 && c.MaxVersion < tls.VersionTLS13 {
			c.MaxVersion = tls.VersionTLS13
		}
		c.NextProtos = []string{alpnH2}
		c.SessionTicketsDisabled = true
		c.ClientSessionCache = nil
		return c
	}
	c := pin(cfg.Clone())
	base := c.Clone()
	base.GetConfigForClient = nil
	get := cfg.GetConfigForClient
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		out := base
		if get != nil {
			inner, err := get(hello)
			if err != nil {
				return nil, err
			}
			if inner != nil {
				out = inner
			}
		}
		out = pin(out.Clone())
		if hc, ok := hello.Conn.(*handshakeConn); ok {
			hc.keyLog(out)
		}
		return out, nil
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
