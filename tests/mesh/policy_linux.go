package mesh

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

// PolicyDir is the local mode's policy directory (ztunnel -policies).
func (m *Mesh) PolicyDir() string { return filepath.Join(m.Dir, "policies") }

// ApplyPolicies is WritePolicies for a test, which removes the file at cleanup (and
// waits for every ztunnel to drop its policies).
func (m *Mesh) ApplyPolicies(tb testing.TB, name, manifests string, refs ...string) {
	tb.Helper()
	if err := m.WritePolicies(name, manifests, refs...); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := m.RemovePolicies(name); err != nil {
			tb.Error(err)
		}
	})
}

// WritePolicies writes manifests (Kubernetes-style YAML documents) as the policy file
// name (in Kubernetes mode: creates the objects through the API server) and waits until
// every running ztunnel has the policies refs ("namespace/name") of all files in force.
func (m *Mesh) WritePolicies(name, manifests string, refs ...string) error {
	m.mu.Lock()
	if m.policyRefs == nil {
		m.policyRefs = map[string][]string{}
		m.policyFiles = map[string]string{}
	}
	m.policyRefs[name], m.policyFiles[name] = refs, manifests
	m.mu.Unlock()
	if m.Kube != nil {
		if err := m.kubePolicies(context.Background(), manifests, true); err != nil {
			return err
		}
		return m.WaitPolicies(context.Background())
	}
	tmp := filepath.Join(m.PolicyDir(), "."+name+".tmp") // dot files are not read
	if err := os.WriteFile(tmp, []byte(manifests), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(m.PolicyDir(), name)); err != nil {
		return err
	}
	return m.WaitPolicies(context.Background())
}

// RemovePolicies removes the policy file name and waits until no ztunnel has its
// policies.
func (m *Mesh) RemovePolicies(name string) error {
	m.mu.Lock()
	manifests := m.policyFiles[name]
	delete(m.policyRefs, name)
	delete(m.policyFiles, name)
	m.mu.Unlock()
	if m.Kube != nil {
		if err := m.kubePolicies(context.Background(), manifests, false); err != nil {
			return err
		}
		return m.WaitPolicies(context.Background())
	}
	if err := os.Remove(filepath.Join(m.PolicyDir(), name)); err != nil {
		return err
	}
	return m.WaitPolicies(context.Background())
}

// WaitPolicies waits until every running ztunnel's /config_dump lists exactly the
// policies applied with ApplyPolicies.
func (m *Mesh) WaitPolicies(ctx context.Context) error {
	m.mu.Lock()
	var want []string
	for _, refs := range m.policyRefs {
		want = append(want, refs...)
	}
	var nodes []*netns.Node
	for _, n := range m.Topo.Nodes {
		if _, ok := m.zt[n.Name]; ok {
			nodes = append(nodes, n)
		}
	}
	m.mu.Unlock()
	slices.Sort(want)
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for _, n := range nodes {
		var got []string
		for {
			d, err := m.Dump(ctx, n)
			if err == nil {
				got = got[:0]
				for _, p := range d.Policies {
					got = append(got, p.Name)
				}
				slices.Sort(got)
				if slices.Equal(got, want) {
					break
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: policies in force [%s], want [%s]", n.Name, strings.Join(got, " "), strings.Join(want, " "))
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}
