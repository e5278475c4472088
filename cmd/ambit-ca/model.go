package main

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

// modelAuthorizer allows a node the identities of the workloads the mesh
// model file schedules on it. The file is reloaded when its mtime or size
// changes; a file that fails to load keeps the previous model in force.
type modelAuthorizer struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	mtime   time.Time // of the loaded model
	size    int64
	badTime time.Time // of the last version that failed to load, not retried
	badSize int64
	onNode  map[string]map[string]bool // node -> "<ns>/<sa>"
}

func newModelAuthorizer(path string, log *slog.Logger) (*modelAuthorizer, error) {
	a := &modelAuthorizer{path: path, log: log}
	if err := a.refreshLocked(); err != nil {
		return nil, err
	}
	return a, nil
}

// Authorize implements ca.Authorizer.
func (a *modelAuthorizer) Authorize(_ context.Context, node string, id spiffeid.ID) error {
	ns, sa, err := identity.ParseWorkloadID(id)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.refreshLocked(); err != nil {
		if a.onNode == nil {
			return fmt.Errorf("%w: %w", identity.ErrUnavailable, err)
		}
		a.log.Warn("mesh model reload failed, keeping the previous one", "path", a.path, "error", err)
	}
	if a.onNode == nil {
		return fmt.Errorf("no mesh model loaded: %w", identity.ErrUnavailable)
	}
	if !a.onNode[node][ns+"/"+sa] {
		return fmt.Errorf("node %q runs no workload of namespace %q service account %q: %w", node, ns, sa, identity.ErrNotAuthorized)
	}
	return nil
}

func (a *modelAuthorizer) refreshLocked() error {
	fi, err := os.Stat(a.path)
	if err != nil {
		return fmt.Errorf("mesh model: %w", err)
	}
	if a.onNode != nil && fi.ModTime().Equal(a.mtime) && fi.Size() == a.size {
		return nil
	}
	if fi.ModTime().Equal(a.badTime) && fi.Size() == a.badSize {
		return nil // already reported
	}
	snap, err := discovery.LoadFile(a.path, discovery.EnrollmentOptions{}.WithDefaults())
	if err != nil {
		a.badTime, a.badSize = fi.ModTime(), fi.Size()
		return err
	}
	onNode := map[string]map[string]bool{}
	for _, w := range snap.Workloads {
		if w.Node == "" {
			continue
		}
		if onNode[w.Node] == nil {
			onNode[w.Node] = map[string]bool{}
		}
		onNode[w.Node][w.Namespace+"/"+w.ServiceAccount] = true
	}
	a.onNode, a.mtime, a.size = onNode, fi.ModTime(), fi.Size()
	a.log.Info("mesh model loaded", "path", a.path, "workloads", len(snap.Workloads))
	return nil
}
