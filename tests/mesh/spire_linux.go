package mesh

import (
	"context"
	"fmt"
	"os"
	"time"

	spiretest "github.com/ambitmesh/ambit/tests/spire"
)

// SPIREOptions run the mesh's identities on a real SPIRE server and one agent per node
// instead of the built-in CA.
type SPIREOptions struct {
	SVIDTTL time.Duration // default_x509_svid_ttl; short values exercise rotation
	CATTL   time.Duration
}

// startSPIRE starts the server, registers each node's tunnel and the model's workloads
// (entries parented to the workload's node, selectors k8s:ns / k8s:sa), and an agent per
// ztunnel node whose authorized delegate is the tunnel identity.
func (m *Mesh) startSPIRE(ctx context.Context) error {
	// Unix socket paths must stay short: keep SPIRE's directory near the root.
	dir, err := os.MkdirTemp("", "ambit-spire-")
	if err != nil {
		return err
	}
	srv, err := spiretest.StartServer(ctx, spiretest.Options{
		Dir: dir, TrustDomain: TrustDomain, SVIDTTL: m.opts.SPIRE.SVIDTTL, CATTL: m.opts.SPIRE.CATTL,
	})
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	m.Spire = srv
	m.spireDir = dir
	m.Agents = map[string]*spiretest.Agent{}
	m.Entries = map[string]string{}
	for _, n := range m.Topo.Nodes {
		if m.opts.Ztunnels != nil && !contains(m.opts.Ztunnels, n.Name) {
			continue
		}
		if _, err := srv.RegisterTunnel(ctx, n.Name, 0); err != nil {
			return err
		}
		a, err := srv.StartAgent(ctx, n.Name, []string{srv.TunnelID()})
		if err != nil {
			return err
		}
		m.Agents[n.Name] = a
	}
	for _, w := range m.Model.Workloads {
		if err := m.RegisterWorkload(ctx, w); err != nil {
			return err
		}
	}
	return nil
}

// RegisterWorkload creates the SPIRE entry of a workload, parented to its node; the entry
// ID is kept in Entries under "<ns>/<sa>@<node>".
func (m *Mesh) RegisterWorkload(ctx context.Context, w Workload) error {
	key := w.Namespace + "/" + w.ServiceAccount + "@" + w.Node
	if _, ok := m.Entries[key]; ok {
		return nil
	}
	id := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", TrustDomain, w.Namespace, w.ServiceAccount)
	entry, err := m.Spire.CreateEntry(ctx, id, m.Spire.NodeID(w.Node),
		[]string{"k8s:ns:" + w.Namespace, "k8s:sa:" + w.ServiceAccount}, 0)
	if err != nil {
		return fmt.Errorf("register %s: %w", key, err)
	}
	m.Entries[key] = entry
	return nil
}

func (m *Mesh) spireArgs(node string) []string {
	a := m.Agents[node]
	if a == nil {
		return nil
	}
	return []string{"-identity", "spire", "-spire-workload-socket", a.WorkloadAddr(), "-spire-admin-socket", a.AdminAddr()}
}

func (m *Mesh) closeSPIRE() error {
	if m.Spire == nil {
		return nil
	}
	err := m.Spire.Close()
	os.RemoveAll(m.spireDir)
	return err
}
