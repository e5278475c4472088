package hbone

import (
	"crypto/tls"
	"fmt"

	"github.com/ambitmesh/ambit/identity"
)

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
		c.NextProtos = []string{identity.ALPN}
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

func checkNegotiated(st tls.ConnectionState) error {
	if st.Version != tls.VersionTLS13 {
		return fmt.Errorf("negotiated tls version %#x, want tls 1.3", st.Version)
	}
	if st.NegotiatedProtocol != identity.ALPN {
		return fmt.Errorf("negotiated alpn %q, want %q", st.NegotiatedProtocol, identity.ALPN)
	}
	return nil
}
