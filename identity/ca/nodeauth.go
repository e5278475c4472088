package ca

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
)

// Pod is what node authorization needs to know of a workload scheduled on a node.
type Pod struct {
	Namespace      string
	ServiceAccount string // "" is "default", as in Kubernetes
	// HostNetwork pods share the node's network: ztunnel never captures them, so
	// their identity is not the node's to hold.
	HostNetwork bool
	// Finished pods (succeeded or failed) hold no identity any more.
	Finished bool
}

// PodLister lists the pods scheduled on a node. Errors wrapping identity.ErrUnavailable
// mean it cannot tell yet (not synced, no model loaded).
type PodLister interface {
	PodsOnNode(node string) ([]Pod, error)
}

// NodeAuthorizer is the CA's Authorizer: a node may hold the identity
// spiffe://<td>/ns/<ns>/sa/<sa> only while a running, pod-network pod of namespace ns
// with service account sa is scheduled on it.
type NodeAuthorizer struct {
	Pods PodLister
}

// Authorize implements Authorizer.
func (a NodeAuthorizer) Authorize(_ context.Context, node string, id spiffeid.ID) error {
	ns, sa, err := identity.ParseWorkloadID(id)
	if err != nil {
		return err
	}
	if node == "" {
		return fmt.Errorf("no node name: %w", identity.ErrNotAuthorized)
	}
	pods, err := a.Pods.PodsOnNode(node)
	if err != nil {
		return fmt.Errorf("pods of node %q: %w", node, err)
	}
	for _, p := range pods {
		if p.Namespace != ns || p.HostNetwork || p.Finished {
			continue
		}
		podSA := p.ServiceAccount
		if podSA == "" {
			podSA = "default"
		}
		if podSA == sa {
			return nil
		}
	}
	return fmt.Errorf("node %q runs no workload of namespace %q service account %q: %w", node, ns, sa, identity.ErrNotAuthorized)
}

// ModelPods lists the workloads a mesh model file schedules on each node (local mode:
// the model that ztunnel reads decides which node may hold which identity). The file
// is reloaded when its mtime or size changes; a version that fails to load is logged
// once and the previous model stays in force.
type ModelPods struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	mtime   time.Time // of the loaded model
	size    int64
	badTime time.Time // of the last version that failed to load, not retried
	badSize int64
	onNode  map[string][]Pod
}

// NewModelPods loads the model at path; it must load now.
func NewModelPods(path string, log *slog.Logger) (*ModelPods, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &ModelPods{path: path, log: log}
	if err := m.refreshLocked(); err != nil {
		return nil, err
	}
	return m, nil
}

// PodsOnNode implements PodLister. The slice is shared: callers must not modify it.
func (m *ModelPods) PodsOnNode(node string) ([]Pod, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.refreshLocked(); err != nil {
		if m.onNode == nil {
			return nil, fmt.Errorf("%w: %w", identity.ErrUnavailable, err)
		}
		m.log.Warn("mesh model reload failed, keeping the previous one", "path", m.path, "error", err)
	}
	return m.onNode[node], nil
}

func (m *ModelPods) refreshLocked() error {
	fi, err := os.Stat(m.path)
	if err != nil {
		return fmt.Errorf("mesh model: %w", err)
	}
	if m.onNode != nil && fi.ModTime().Equal(m.mtime) && fi.Size() == m.size {
		return nil
	}
	if fi.ModTime().Equal(m.badTime) && fi.Size() == m.badSize {
		return nil // already reported
	}
	snap, err := discovery.LoadFile(m.path, discovery.EnrollmentOptions{}.WithDefaults())
	if err != nil {
		m.badTime, m.badSize = fi.ModTime(), fi.Size()
		return err
	}
	onNode := map[string][]Pod{}
	for _, w := range snap.Workloads {
		if w.Node != "" {
			onNode[w.Node] = append(onNode[w.Node], Pod{Namespace: w.Namespace, ServiceAccount: w.ServiceAccount})
		}
	}
	m.onNode, m.mtime, m.size = onNode, fi.ModTime(), fi.Size()
	m.log.Info("mesh model loaded", "path", m.path, "workloads", len(snap.Workloads))
	return nil
}
