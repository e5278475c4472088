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

// Pod is what authorization needs to know of a pod.
type Pod struct {
	Namespace, Name string
	UID             string
	ServiceAccount  string // "" is "default", as in Kubernetes
	// HostNetwork pods share the node's network: ztunnel never captures them, so
	// their identity is not the node's to hold.
	HostNetwork bool
	// Finished pods (succeeded or failed) hold no identity any more.
	Finished bool
	// Gateway is the waypoint the pod runs (label gateway.networking.k8s.io/gateway-name),
	// "" for other pods.
	Gateway string
}

func (p Pod) serviceAccount() string {
	if p.ServiceAccount == "" {
		return "default"
	}
	return p.ServiceAccount
}

// PodLister finds pods: those scheduled on a node, and one by namespace and name.
// Errors wrapping identity.ErrUnavailable mean it cannot tell yet (not synced, no model
// loaded).
type PodLister interface {
	PodsOnNode(node string) ([]Pod, error)
	Pod(namespace, name string) (Pod, bool, error)
}

// PodAuthorizer is the CA's Authorizer.
//
// A node may hold the identity spiffe://<td>/ns/<ns>/sa/<sa> only while a running,
// pod-network pod of namespace ns with service account sa is scheduled on it.
//
// A workload (a pod that authenticated with its own token) may hold only its own
// service account's identity, and only while its pod exists with the token's UID, has
// not finished, runs as that service account and is a waypoint pod (labelled
// gateway.networking.k8s.io/gateway-name). Only waypoints terminate HBONE themselves;
// every other pod's certificate is held by its node's ztunnel and its key never leaves
// that node, so no other pod gets a certificate (and a key) of its own.
type PodAuthorizer struct {
	Pods PodLister
}

// Authorize implements Authorizer.
func (a PodAuthorizer) Authorize(_ context.Context, caller Caller, id spiffeid.ID) error {
	ns, sa, err := identity.ParseWorkloadID(id)
	if err != nil {
		return err
	}
	if caller.Workload != nil {
		return a.authorizeWorkload(*caller.Workload, id, ns, sa)
	}
	node := caller.Node
	if node == "" {
		return fmt.Errorf("no node name: %w", identity.ErrNotAuthorized)
	}
	pods, err := a.Pods.PodsOnNode(node)
	if err != nil {
		return fmt.Errorf("pods of node %q: %w", node, err)
	}
	for _, p := range pods {
		if p.Namespace == ns && !p.HostNetwork && !p.Finished && p.serviceAccount() == sa {
			return nil
		}
	}
	return fmt.Errorf("node %q runs no workload of namespace %q service account %q: %w", node, ns, sa, identity.ErrNotAuthorized)
}

func (a PodAuthorizer) authorizeWorkload(w PodRef, id spiffeid.ID, ns, sa string) error {
	if ns != w.Namespace || sa != w.ServiceAccount {
		own, _ := identity.WorkloadID(id.TrustDomain(), w.Namespace, w.ServiceAccount)
		return refusal("a pod's own token gets only its own identity " + own.String())
	}
	p, ok, err := a.Pods.Pod(w.Namespace, w.Name)
	pod := w.Namespace + "/" + w.Name
	switch {
	case err != nil:
		return fmt.Errorf("pod %s: %w", pod, err)
	case !ok:
		return refusal("pod " + pod + " does not exist")
	case p.UID != w.UID:
		return refusal(fmt.Sprintf("pod %s has UID %s, the token is bound to UID %s", pod, p.UID, w.UID))
	case p.Finished:
		return refusal("pod " + pod + " has finished")
	case p.serviceAccount() != w.ServiceAccount:
		return refusal(fmt.Sprintf("pod %s runs as service account %q, not %q", pod, p.serviceAccount(), w.ServiceAccount))
	case p.Gateway == "":
		return refusal("pod " + pod + " is not a waypoint pod (no label " + discovery.LabelGatewayName + "): only waypoints get certificates of their own")
	}
	return nil
}

// refusal is a reason to refuse a workload, told to it as is (it concerns only its own
// pod); it wraps identity.ErrNotAuthorized.
type refusal string

func (r refusal) Error() string { return string(r) }
func (refusal) Unwrap() error   { return identity.ErrNotAuthorized }

// ModelPods lists the workloads of a mesh model file, by node and by name (local mode:
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
	byName  map[string]Pod // "namespace/name"
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
	if err := m.loadedLocked(); err != nil {
		return nil, err
	}
	return m.onNode[node], nil
}

// Pod implements PodLister: the model's workload namespace/name.
func (m *ModelPods) Pod(namespace, name string) (Pod, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.loadedLocked(); err != nil {
		return Pod{}, false, err
	}
	p, ok := m.byName[namespace+"/"+name]
	return p, ok, nil
}

// loadedLocked reloads a changed model; an error means there is none to answer from.
func (m *ModelPods) loadedLocked() error {
	if err := m.refreshLocked(); err != nil {
		if m.onNode == nil {
			return fmt.Errorf("%w: %w", identity.ErrUnavailable, err)
		}
		m.log.Warn("mesh model reload failed, keeping the previous one", "path", m.path, "error", err)
	}
	return nil
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
	onNode, byName := map[string][]Pod{}, map[string]Pod{}
	for _, w := range snap.Workloads {
		p := Pod{Namespace: w.Namespace, Name: w.Name, UID: w.UID, ServiceAccount: w.ServiceAccount, Gateway: w.Labels[discovery.LabelGatewayName]}
		byName[w.Namespace+"/"+w.Name] = p
		if w.Node != "" {
			onNode[w.Node] = append(onNode[w.Node], p)
		}
	}
	m.onNode, m.byName, m.mtime, m.size = onNode, byName, fi.ModTime(), fi.Size()
	m.log.Info("mesh model loaded", "path", m.path, "workloads", len(snap.Workloads))
	return nil
}
