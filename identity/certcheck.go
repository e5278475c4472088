package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// What the mesh refuses in a certificate besides its signatures, validity and
// identity: weak keys and extended key usages that exclude the certificate's
// role. The same rules apply to chains peers present (VerifyPeer) and to the
// ones this node presents (CheckOwnChain, and the TLS configs' certificate
// callbacks), so a node never offers what its peers would refuse.

// minRSABits is the smallest RSA modulus accepted.
const minRSABits = 2048

// checkKey reports why pub is too weak: RSA under minRSABits, or ECDSA on a
// curve other than P-256, P-384 or P-521. Ed25519 is accepted; any other key
// type is refused.
func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return errors.New("empty rsa key")
		}
		if n := k.N.BitLen(); n < minRSABits {
			return fmt.Errorf("rsa key of %d bits, want >= %d", n, minRSABits)
		}
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return errors.New("empty ecdsa key")
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return fmt.Errorf("ecdsa key on curve %s, want P-256, P-384 or P-521", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("unsupported key type %T", pub)
	}
	return nil
}

// allowsUsage reports whether c's extended key usage permits u. As in
// crypto/x509's verifier, a certificate without the extension permits every
// usage, and so does one listing anyExtendedKeyUsage.
func allowsUsage(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	for _, e := range c.ExtKeyUsage {
		if e == u || e == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageClientAuth:
		return "client authentication"
	case x509.ExtKeyUsageServerAuth:
		return "server authentication"
	}
	return fmt.Sprintf("extended key usage %d", u)
}

// checkCert reports why c is refused for usages: its key, or an extended key
// usage that excludes one of them.
func checkCert(c *x509.Certificate, usages ...x509.ExtKeyUsage) error {
	if err := checkKey(c.PublicKey); err != nil {
		return err
	}
	for _, u := range usages {
		if !allowsUsage(c, u) {
			return fmt.Errorf("extended key usage does not allow %s", usageName(u))
		}
	}
	return nil
}

// checkChain applies checkCert to every certificate of chain (leaf first, as
// presented in a handshake). Intermediates are held to the same usages because
// crypto/x509 constrains a chain by each of its certificates' extended key
// usage; checking here first names the certificate at fault.
func checkChain(chain []*x509.Certificate, usages ...x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("empty certificate chain")
	}
	for i, c := range chain {
		if c == nil {
			return fmt.Errorf("certificate %d of the chain is nil", i)
		}
		if err := checkCert(c, usages...); err != nil {
			if i == 0 {
				return err
			}
			return fmt.Errorf("intermediate %q: %w", c.Subject.String(), err)
		}
	}
	return nil
}

// CheckOwnChain reports why peers would refuse chain (leaf first) as one of
// this node's certificates, which serve both HBONE roles: a weak key in any
// certificate, or an extended key usage without client or server
// authentication. Certificate sources call it when a certificate arrives.
func CheckOwnChain(chain []*x509.Certificate) error {
	return checkChain(chain, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth)
}

// checkPresented checks the leaf of a certificate about to be presented for
// usage; it parses the leaf only if the source did not.
func checkPresented(c *tls.Certificate, usage x509.ExtKeyUsage) error {
	leaf := c.Leaf
	if leaf == nil {
		if len(c.Certificate) == 0 {
			return errors.New("no certificate")
		}
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return fmt.Errorf("parse leaf: %w", err)
		}
	}
	return checkCert(leaf, usage)
}
