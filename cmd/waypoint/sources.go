package main

import (
	"flag"
	"fmt"

	"github.com/ambitmesh/ambit/discovery/kube/cluster"
	"github.com/ambitmesh/ambit/identity/spire"
	"github.com/ambitmesh/ambit/waypoint"
)

// sources picks where the waypoint's mesh model and its own identity come from.
// They are built here, not in package waypoint, which links neither client-go nor
// the SPIRE client; the waypoint's defaults are the model file and the built-in CA.
type sources struct {
	kube       bool
	kubeconfig string

	identity       string
	workloadSocket string
}

func (s *sources) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&s.kube, "kube", false, "read the mesh model from Kubernetes (in-cluster config unless -kubeconfig)")
	fs.StringVar(&s.kubeconfig, "kubeconfig", "", "kubeconfig file (implies -kube)")
	fs.StringVar(&s.identity, "identity", "ca", `identity source: "ca" (the built-in CA) or "spire" (the SPIRE agent's Workload API)`)
	fs.StringVar(&s.workloadSocket, "spire-workload-socket", "unix:///run/spire/agent/public/api.sock", "SPIRE agent Workload API socket (the waypoint's own SVID and bundles)")
}

// wire sets the model and identity sources of deps that cfg and the flags ask for.
func (s *sources) wire(deps *waypoint.Deps, cfg waypoint.Config) error {
	switch s.identity {
	case "ca":
	case "spire":
		src, err := spire.NewOwn(spire.OwnConfig{WorkloadSocket: s.workloadSocket, Logger: deps.Logger})
		if err != nil {
			return fmt.Errorf("-spire-workload-socket: %w", err)
		}
		deps.Identity = src
	default:
		return fmt.Errorf(`-identity %q: want "ca" or "spire"`, s.identity)
	}
	if !s.kube && s.kubeconfig == "" {
		return nil
	}
	// The same source as ztunnel's, with the routes and DestinationRules the waypoint
	// compiles.
	cfg = cfg.WithDefaults()
	src, store, err := cluster.New(cluster.Config{
		Kubeconfig: s.kubeconfig, UserAgent: "ambit-waypoint", RootNamespace: cfg.RootNamespace,
		WaypointClass: cfg.WaypointClass, Routes: true, DestinationRules: true, Options: cfg.Enrollment, Logger: deps.Logger,
	})
	if err != nil {
		return err
	}
	deps.Store, deps.ModelSource = store, src
	return nil
}
