package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
)

const modelV1 = `namespaces:
  - name: default
    labels: {istio.io/dataplane-mode: ambient}
workloads:
  - name: client
    namespace: default
    serviceAccount: client
    node: node1
    ips: [198.18.1.10]
  - name: echo
    namespace: default
    serviceAccount: echo
    node: node2
    ips: [198.18.2.10]
`

func writeModel(t *testing.T, path, content string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	// Explicit mtimes: two writes within the file system's timestamp granularity must still differ.
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestModelAuthorizer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	writeModel(t, path, modelV1, base)
	a, err := newModelAuthorizer(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	echo := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/echo")
	check := func(node string, id spiffeid.ID, allowed bool) {
		t.Helper()
		err := a.Authorize(context.Background(), node, id)
		if allowed && err != nil {
			t.Errorf("%s for %s: %v, want allowed", node, id, err)
		}
		if !allowed && !errors.Is(err, identity.ErrNotAuthorized) {
			t.Errorf("%s for %s: %v, want ErrNotAuthorized", node, id, err)
		}
	}
	check("node1", client, true)
	check("node1", echo, false)
	check("node2", echo, true)
	check("node3", client, false)
	if err := a.Authorize(context.Background(), "node1", spiffeid.RequireFromString("spiffe://cluster.local/x")); err == nil {
		t.Error("non-workload id allowed")
	}

	// The echo workload moves to node1: picked up on the next request.
	writeModel(t, path, modelV1[:len(modelV1)-len("    node: node2\n    ips: [198.18.2.10]\n")]+"    node: node1\n    ips: [198.18.2.10]\n", base.Add(time.Second))
	check("node1", echo, true)
	check("node2", echo, false)

	// A broken model keeps the previous one in force.
	writeModel(t, path, "workloads: [", base.Add(2*time.Second))
	check("node1", echo, true)

	// A missing model at start is an error.
	if _, err := newModelAuthorizer(filepath.Join(t.TempDir(), "none.yaml"), slog.New(slog.DiscardHandler)); err == nil {
		t.Error("missing model accepted")
	}
}
