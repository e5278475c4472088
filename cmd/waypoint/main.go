// Command waypoint is Ambit's L7 proxy for the Services and workloads bound to it:
// flags -> waypoint.Config -> waypoint.Run.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ambitmesh/ambit/discovery/kube/cluster"
	"github.com/ambitmesh/ambit/internal/daemon"
	"github.com/ambitmesh/ambit/waypoint"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var (
		cfg        waypoint.Config
		proc       daemon.Config
		kube       bool
		kubeconfig string
	)
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	fs.BoolVar(&kube, "kube", false, "read the mesh model from Kubernetes (in-cluster config unless -kubeconfig)")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (implies -kube)")
	proc.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := daemon.New(proc)
	if err != nil {
		return err
	}
	defer d.Close()
	deps := waypoint.Deps{Logger: d.Logger, Registry: d.Registry}
	if kube || kubeconfig != "" {
		// The same source as ztunnel's, with the routes the waypoint compiles.
		src, store, err := cluster.New(cluster.Config{
			Kubeconfig: kubeconfig, UserAgent: "ambit-waypoint", RootNamespace: cfg.RootNamespace,
			WaypointClass: cfg.WaypointClass, Routes: true, Options: cfg.Enrollment, Logger: d.Logger,
		})
		if err != nil {
			return err
		}
		deps.Store, deps.ModelSource = store, src
	}
	w, err := waypoint.New(cfg, deps)
	if err != nil {
		return err
	}
	return d.Run(w.Run)
}
