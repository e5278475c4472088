package waypoint

import (
	"context"
	"crypto/tls"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
)

// statusSource is an identity.Source that holds nothing and reports a status.
type statusSource struct {
	status string
	wanted []spiffeid.ID
}

func (s *statusSource) Certificate(context.Context, spiffeid.ID) (*tls.Certificate, error) {
	return nil, identity.ErrUnavailable
}
func (s *statusSource) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return nil, identity.ErrUnavailable
}
func (s *statusSource) SetWanted(ids []spiffeid.ID)       { s.wanted = ids }
func (s *statusSource) Ready() bool                       { return s.status == "" }
func (s *statusSource) Status() string                    { return s.status }
func (s *statusSource) Certificates() []identity.CertInfo { return nil }

// The waypoint declares its identity to a supplied source and reports the source's
// reason in readiness.
func TestReadyReportsIdentitySource(t *testing.T) {
	store := discovery.NewStore()
	store.Set(testModel(t, ""))
	src := &statusSource{status: "SPIRE issued spiffe://cluster.local/ns/apps/sa/x, want spiffe://cluster.local/ns/apps/sa/wp"}
	w, err := New(Config{Name: "wp", Namespace: "apps", Serve: serveOff()}, Deps{Store: store, Identity: src})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if want := []spiffeid.ID{id("apps", "wp")}; !slices.Equal(src.wanted, want) {
		t.Errorf("wanted %v, want %v", src.wanted, want)
	}
	err = w.ready()
	if err == nil || !strings.Contains(err.Error(), src.status) || !strings.Contains(err.Error(), "spiffe://cluster.local/ns/apps/sa/wp") {
		t.Errorf("ready: %v, want the source's status", err)
	}
	src.status = ""
	if err := w.ready(); err != nil {
		t.Errorf("ready with the identity held: %v", err)
	}
}
