package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Source is what the data plane needs from any certificate provider.
type Source interface {
	// Certificate returns a currently valid certificate (leaf first + chain,
	// private key) for id, waiting (until ctx ends) if it is being fetched; with
	// a ctx that has ended it answers from what it holds, without waiting.
	// Unknown/refused ids return an error wrapping ErrNotAuthorized or ErrUnavailable.
	Certificate(ctx context.Context, id spiffeid.ID) (*tls.Certificate, error)
	// GetX509BundleForTrustDomain returns the trust roots used to verify peers.
	GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error)
	// SetWanted declares the identities this node serves now; the source
	// prefetches and rotates them and drops the others.
	SetWanted(ids []spiffeid.ID)
	// Ready reports whether every wanted id has a valid certificate.
	Ready() bool
	// Certificates describes what is held, never keys.
	Certificates() []CertInfo
}

// CertInfo describes one held certificate for admin output.
type CertInfo struct {
	ID        string
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	State     string
}

// Certificate states reported in CertInfo.State.
const (
	StatePending  = "pending"  // no certificate yet, being fetched
	StateValid    = "valid"    // valid, renewal not yet due
	StateRenewing = "renewing" // valid, renewal due or in progress (possibly retrying)
	StateFailed   = "failed"   // no valid certificate and the last attempt failed
)

var (
	ErrNotAuthorized = errors.New("identity not authorized for this node")
	ErrUnavailable   = errors.New("certificate unavailable")
)

// Issuer obtains a signed certificate for id and a CSR (the key stays with the caller).
type Issuer interface {
	Issue(ctx context.Context, id spiffeid.ID, csrDER []byte) (chain []*x509.Certificate, roots []*x509.Certificate, err error)
}
