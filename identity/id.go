// Package identity holds the SPIFFE identities of workloads, the certificate
// sources the data plane draws them from, and the mTLS configurations used by HBONE.
package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

// WorkloadID returns spiffe://<td>/ns/<namespace>/sa/<serviceAccount>.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, errors.New("workload id: empty trust domain")
	}
	if err := spiffeid.ValidatePathSegment(namespace); err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id: namespace %q: %w", namespace, err)
	}
	if err := spiffeid.ValidatePathSegment(serviceAccount); err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id: service account %q: %w", serviceAccount, err)
	}
	return spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// ParseWorkloadID splits an ID of the form spiffe://<td>/ns/<ns>/sa/<sa>.
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	if id.IsZero() {
		return "", "", errors.New("parse workload id: empty id")
	}
	parts := strings.Split(id.Path(), "/")
	// A valid path starts with "/", so parts[0] is "".
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" || parts[2] == "" || parts[4] == "" {
		return "", "", fmt.Errorf("parse workload id %q: path must be /ns/<namespace>/sa/<service-account>", id)
	}
	return parts[2], parts[4], nil
}
