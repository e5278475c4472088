//go:build !nomesh

package main

import (
	"context"
	"fmt"

	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// startFabric starts the whole mesh (CA and a ztunnel per node) with pod0 of each node
// enrolled and pod1 plain. Without the ambit path it builds the bare topology. If the mesh
// does not come up, it falls back to the bare topology and says why in ambitErr, so the
// baselines are still measured.
func startFabric(ctx context.Context, cfg config) (*fabric, error) {
	if contains(cfg.Paths, "ambit") {
		m, err := mesh.Start(ctx, mesh.Options{
			Nodes: 2, PodsPerNode: 2, BinDir: cfg.Bin, ExtraArgs: cfg.ZtunnelArgs,
			Model: func(t *netns.Topology) *mesh.Model {
				md := mesh.DefaultModel(t)
				for i := range md.Workloads {
					if isPlainPod(md.Workloads[i].Name) {
						md.Workloads[i].Namespace = "plain"
					}
				}
				return md
			},
		})
		if err == nil {
			f := &fabric{topo: m.Topo, close: m.Close}
			f.ztunnelPID = func(node string) int {
				if p := m.Ztunnel(node); p != nil {
					return p.Pid()
				}
				return 0
			}
			f.connsOpened = func(ctx context.Context) (float64, error) {
				text, err := m.Metrics(ctx, m.Topo.Nodes[0])
				if err != nil {
					return 0, err
				}
				return sumMetric(text, "istio_tcp_connections_opened_total"), nil
			}
			f.podRoles()
			return f, nil
		}
		f, berr := bareFabric()
		if berr != nil {
			return nil, fmt.Errorf("start mesh: %v; bare topology: %w", err, berr)
		}
		f.ambitErr = fmt.Errorf("mesh did not start: %w", err)
		return f, nil
	}
	return bareFabric()
}
