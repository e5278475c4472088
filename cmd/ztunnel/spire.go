package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity/spire"
)

type spireFlags struct {
	workloadSocket, adminSocket, selectors string
}

// spireSource makes pod identities come from a SPIRE agent instead of the built-in CA.
func spireSource(trustDomain string, f spireFlags, log *slog.Logger) (*spire.Source, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("-trust-domain %q: %w", trustDomain, err)
	}
	var templates []string
	for _, t := range strings.Split(f.selectors, ",") {
		if t = strings.TrimSpace(t); t != "" {
			templates = append(templates, t)
		}
	}
	return spire.New(spire.Config{
		WorkloadSocket:    f.workloadSocket,
		AdminSocket:       f.adminSocket,
		TrustDomain:       td,
		SelectorTemplates: templates,
		Logger:            log,
	})
}
