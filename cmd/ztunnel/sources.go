package main

import (
	"flag"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube/cluster"
	"github.com/ambitmesh/ambit/identity/spire"
	"github.com/ambitmesh/ambit/internal/flagvalue"
	"github.com/ambitmesh/ambit/ztunnel"
)

// sources picks where the mesh model and the pods' identities come from. They are
// built here, not in package ztunnel, which neither links client-go nor the SPIRE
// client; ztunnel's defaults are the model file and the built-in CA.
type sources struct {
	kube          bool
	kubeconfig    string
	waypointClass string

	identity       string
	workloadSocket string
	adminSocket    string
	selectors      []string
}

func (s *sources) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&s.kube, "kube", false, "read the mesh model from Kubernetes (in-cluster config unless -kubeconfig)")
	fs.StringVar(&s.kubeconfig, "kubeconfig", "", "kubeconfig file (implies -kube)")
	fs.StringVar(&s.waypointClass, "waypoint-class", discovery.DefaultWaypointClass, "GatewayClass of waypoints (Kubernetes mode)")
	fs.StringVar(&s.identity, "identity", "ca", `identity source: "ca" (the built-in CA) or "spire" (a SPIRE agent)`)
	fs.StringVar(&s.workloadSocket, "spire-workload-socket", "unix:///run/spire/agent/public/api.sock", "SPIRE agent Workload API socket (ztunnel's own SVID and bundles)")
	fs.StringVar(&s.adminSocket, "spire-admin-socket", "unix:///run/spire/agent/admin/admin.sock", "SPIRE agent admin socket (Delegated Identity API)")
	s.selectors = append([]string(nil), spire.DefaultSelectorTemplates...)
	fs.Var(flagvalue.ListVar(&s.selectors), "spire-selectors", "comma-separated selector templates for a workload identity ({ns}, {sa} are replaced)")
}

// wire sets the model and identity sources of deps that cfg and the flags ask for.
func (s *sources) wire(deps *ztunnel.Deps, cfg ztunnel.Config) error {
	switch {
	case s.kube || s.kubeconfig != "":
		if err := s.kubeModel(deps, cfg); err != nil {
			return err
		}
	case cfg.ModelPath == "":
		return fmt.Errorf("-model or -kube is required")
	}
	switch s.identity {
	case "ca":
	case "spire":
		src, err := s.spireSource(cfg.TrustDomain, deps)
		if err != nil {
			return err
		}
		deps.Identity = src
	default:
		return fmt.Errorf(`-identity %q: want "ca" or "spire"`, s.identity)
	}
	return nil
}

// kubeModel feeds ztunnel's model from the Kubernetes API.
func (s *sources) kubeModel(deps *ztunnel.Deps, cfg ztunnel.Config) error {
	src, store, err := cluster.New(cluster.Config{
		Kubeconfig: s.kubeconfig, UserAgent: "ambit-ztunnel", RootNamespace: cfg.RootNamespace,
		WaypointClass: s.waypointClass, Options: cfg.Enrollment, Logger: deps.Logger,
	})
	if err != nil {
		return err
	}
	deps.Store = store
	deps.ModelSource = src
	deps.ModelProblems = func() any { return src.Problems() }
	return nil
}

// spireSource makes pod identities come from a SPIRE agent instead of the built-in CA.
func (s *sources) spireSource(trustDomain string, deps *ztunnel.Deps) (*spire.Source, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("-trust-domain %q: %w", trustDomain, err)
	}
	return spire.New(spire.Config{
		WorkloadSocket:    s.workloadSocket,
		AdminSocket:       s.adminSocket,
		TrustDomain:       td,
		SelectorTemplates: s.selectors,
		Logger:            deps.Logger,
	})
}
