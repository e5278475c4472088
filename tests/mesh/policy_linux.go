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

// ApplyPolicies writes manifests (Kubernetes-style YAML documents) as the policy file
// name and waits until every running ztunnel has the policies refs ("namespace/name")
// of all files in force. At cleanup the file is removed and the wait repeated.
func (m *Mesh) ApplyPolicies(tb testing.TB, name, manifests string, refs ...string) {
	tb.Helper()
	m.mu.Lock()
	if m.policyRefs == nil {
		m.policyRefs = map[string][]string{}
	}
	m.policyRefs[name] = refs
	m.mu.Unlock()
	path := filepath.Join(m.PolicyDir(), name)
	tmp := filepath.Join(m.PolicyDir(), "."+name+".tmp") // dot files are not read
	if err := os.WriteFile(tmp, []byte(manifests), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
	if err := m.WaitPolicies(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		m.mu.Lock()
		delete(m.policyRefs, name)
		m.mu.Unlock()
		if err := os.Remove(path); err != nil {
			tb.Error(err)
		}
		if err := m.WaitPolicies(context.Background()); err != nil {
			tb.Error(err)
		}
	})
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
