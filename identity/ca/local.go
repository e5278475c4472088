package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

// LocalIssuer implements identity.Issuer with an in-process CA, for tests and
// single-process use. A nil Authorizer allows every identity.
type LocalIssuer struct {
	CA         *CA
	Node       string
	Authorizer Authorizer
}

// Issue implements identity.Issuer.
func (l LocalIssuer) Issue(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, []*x509.Certificate, error) {
	if l.CA == nil {
		return nil, nil, errors.New("local issuer: no CA")
	}
	if l.Authorizer != nil {
		if err := l.Authorizer.Authorize(ctx, Caller{Node: l.Node}, id); err != nil {
			if errors.Is(err, identity.ErrUnavailable) {
				return nil, nil, fmt.Errorf("authorize node %q for %s: %w", l.Node, id, err)
			}
			return nil, nil, fmt.Errorf("node %q for %s: %w: %w", l.Node, id, identity.ErrNotAuthorized, err)
		}
	}
	chain, err := l.CA.Sign(id, csrDER)
	if err != nil {
		return nil, nil, err
	}
	return chain, l.CA.Roots(), nil
}
