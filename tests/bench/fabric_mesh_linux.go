//go:build !nomesh

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/ztunnel"
)

// startFabric starts the whole mesh (CA and a ztunnel per node) with pod0 of each node
// enrolled and pod1 plain. Without the ambit path it builds the bare topology. If the mesh
// does not come up, it falls back to the bare topology and says why in ambitErr, so the
// baselines are still measured.
func startFabric(ctx context.Context, cfg config) (*fabric, error) {
	l7 := contains(cfg.Tests, TestL7)
	if slices.ContainsFunc(cfg.Paths, isAmbit) || l7 {
		opts := mesh.Options{Nodes: 2, PodsPerNode: 2, BinDir: cfg.Bin, ExtraArgs: cfg.ZtunnelArgs, Model: benchModel}
		if l7 {
			// node3 holds the L7 hops and runs no ztunnel (a waypoint's pod is never
			// captured); node2's third pod is the waypoint's backend, the third and fourth
			// pods of node1 and node2 those of the fault case (l7_mesh_linux.go).
			opts.Nodes, opts.PodsPerNode, opts.Ztunnels, opts.Model = 3, 4, []string{"node1", "node2"}, l7Model
		}
		m, err := mesh.Start(ctx, opts)
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
			f.profile = profileZtunnel
			f.podRoles()
			pc, err := newPolicyCase(m, f.meshClient, f.meshServer, f.plainClient)
			if err != nil {
				m.Close()
				return nil, fmt.Errorf("policy case: %w", err)
			}
			f.meshState, f.checkPolicies = pc.set, pc.check
			if l7 {
				if f.l7, err = newL7Mesh(m); err != nil {
					m.Close()
					return nil, fmt.Errorf("l7 case: %w", err)
				}
			}
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

// benchModel is the default model with pod1 of each node in namespace "plain".
func benchModel(t *netns.Topology) *mesh.Model {
	md := mesh.DefaultModel(t)
	for i := range md.Workloads {
		if isPlainPod(md.Workloads[i].Name) {
			md.Workloads[i].Namespace = "plain"
		}
	}
	return md
}

// profileZtunnel fetches a CPU profile of the node's ztunnel from its admin port
// (net/http/pprof) over d and writes it to file.
func profileZtunnel(ctx context.Context, node *netns.Node, d time.Duration, file string) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	kind := "profile"
	if filepath.Ext(file) == ".trace" {
		kind = "trace" // an execution trace: go tool trace -pprof=sched shows scheduling delays
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/%s?seconds=%d", ztunnel.PortAdmin, kind, secs)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	c := &http.Client{
		Timeout:   d + 30*time.Second,
		Transport: &http.Transport{DialContext: node.NS.DialContext, DisableKeepAlives: true},
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("cpu profile of %s: %w", node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cpu profile of %s: %s", node.Name, resp.Status)
	}
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		out.Close()
		return fmt.Errorf("cpu profile of %s: %w", node.Name, err)
	}
	return out.Close()
}
