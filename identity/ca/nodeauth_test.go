package ca_test

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

// podMap is a test PodLister: node -> pods.
type podMap map[string][]ca.Pod

func (m podMap) PodsOnNode(node string) ([]ca.Pod, error) { return m[node], nil }

func (m podMap) Pod(ns, name string) (ca.Pod, bool, error) {
	for _, pods := range m {
		for _, p := range pods {
			if p.Namespace == ns && p.Name == name {
				return p, true, nil
			}
		}
	}
	return ca.Pod{}, false, nil
}

type unavailable struct{}

func (unavailable) PodsOnNode(string) ([]ca.Pod, error) {
	return nil, fmt.Errorf("pods not synced yet: %w", identity.ErrUnavailable)
}

func (unavailable) Pod(string, string) (ca.Pod, bool, error) {
	return ca.Pod{}, false, fmt.Errorf("pods not synced yet: %w", identity.ErrUnavailable)
}

func TestNodeAuthorizer(t *testing.T) {
	pods := podMap{
		"node1": {
			{Namespace: "default", ServiceAccount: "client"},
			{Namespace: "default"}, // the namespace's default service account
			{Namespace: "kube-system", ServiceAccount: "proxy", HostNetwork: true},
			{Namespace: "batch", ServiceAccount: "job", Finished: true},
		},
		"node2": {{Namespace: "default", ServiceAccount: "echo"}},
	}
	id := func(ns, sa string) spiffeid.ID {
		return spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
	}
	const (
		allowed = iota
		refused // ErrNotAuthorized: the server answers 403
		unknown // ErrUnavailable: the server answers 503
		invalid // neither: not a workload identity
	)
	tests := []struct {
		name   string
		lister ca.PodLister
		node   string
		id     spiffeid.ID
		want   int
	}{
		{"own pod", pods, "node1", id("default", "client"), allowed},
		{"own pod with the default service account", pods, "node1", id("default", "default"), allowed},
		{"pod on another node", pods, "node1", id("default", "echo"), refused},
		{"that pod's own node", pods, "node2", id("default", "echo"), allowed},
		{"unknown node", pods, "node9", id("default", "client"), refused},
		{"no node name", pods, "", id("default", "client"), refused},
		{"same service account name in another namespace", pods, "node1", id("other", "client"), refused},
		{"host-network pod", pods, "node1", id("kube-system", "proxy"), refused},
		{"finished pod", pods, "node1", id("batch", "job"), refused},
		{"not a workload identity", pods, "node1", spiffeid.RequireFromString("spiffe://cluster.local/ztunnel"), invalid},
		{"pods not known yet", unavailable{}, "node1", id("default", "client"), unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ca.PodAuthorizer{Pods: tt.lister}.Authorize(t.Context(), ca.Caller{Node: tt.node}, tt.id)
			var got int
			switch {
			case err == nil:
				got = allowed
			case errors.Is(err, identity.ErrNotAuthorized):
				got = refused
			case errors.Is(err, identity.ErrUnavailable):
				got = unknown
			default:
				got = invalid
			}
			if got != tt.want {
				t.Fatalf("node %q for %s: %v (outcome %d), want outcome %d", tt.node, tt.id, err, got, tt.want)
			}
		})
	}
}

// A pod that authenticated with its own token may hold its own identity only, while
// its pod runs as that service account, and only if it is a waypoint pod.
func TestPodAuthorizerWorkload(t *testing.T) {
	wp := ca.Pod{Namespace: "apps", Name: "waypoint-0", UID: "uid-1", ServiceAccount: "waypoint", Gateway: "waypoint"}
	finished, otherSA, app := wp, wp, wp
	finished.Name, finished.UID, finished.Finished = "waypoint-done", "uid-2", true
	otherSA.Name, otherSA.UID, otherSA.ServiceAccount = "waypoint-sa", "uid-3", "other"
	app.Name, app.UID, app.Gateway = "app-0", "uid-4", ""
	pods := podMap{"node1": {wp, finished, otherSA, app}}
	ref := func(name, uid, sa string) *ca.PodRef {
		return &ca.PodRef{Namespace: "apps", Name: name, UID: uid, ServiceAccount: sa}
	}
	own := spiffeid.RequireFromString("spiffe://cluster.local/ns/apps/sa/waypoint")
	tests := []struct {
		name   string
		lister ca.PodLister
		pod    *ca.PodRef
		id     spiffeid.ID
		want   string // "" allowed; else part of the refusal
	}{
		{"own identity", pods, ref("waypoint-0", "uid-1", "waypoint"), own, ""},
		{"another identity", pods, ref("waypoint-0", "uid-1", "waypoint"),
			spiffeid.RequireFromString("spiffe://cluster.local/ns/apps/sa/client"), "only its own identity spiffe://cluster.local/ns/apps/sa/waypoint"},
		{"same account in another namespace", pods, ref("waypoint-0", "uid-1", "waypoint"),
			spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/waypoint"), "only its own identity"},
		{"pod gone", pods, ref("waypoint-9", "uid-9", "waypoint"), own, "pod apps/waypoint-9 does not exist"},
		{"pod recreated under the same name", pods, ref("waypoint-0", "uid-old", "waypoint"), own, "the token is bound to UID uid-old"},
		{"pod finished", pods, ref("waypoint-done", "uid-2", "waypoint"), own, "has finished"},
		{"pod runs as another service account", pods, ref("waypoint-sa", "uid-3", "waypoint"), own, `runs as service account "other"`},
		{"not a waypoint pod", pods, ref("app-0", "uid-4", "waypoint"), own, "not a waypoint pod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ca.PodAuthorizer{Pods: tt.lister}.Authorize(t.Context(), ca.Caller{Workload: tt.pod}, tt.id)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, identity.ErrNotAuthorized) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%v, want ErrNotAuthorized containing %q", err, tt.want)
			}
		})
	}
	err := ca.PodAuthorizer{Pods: unavailable{}}.Authorize(t.Context(), ca.Caller{Workload: ref("waypoint-0", "uid-1", "waypoint")}, own)
	if !errors.Is(err, identity.ErrUnavailable) {
		t.Fatalf("pods not known yet: %v, want ErrUnavailable", err)
	}
}

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

func writeModel(tb testing.TB, path, content string, mtime time.Time) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
	// Explicit mtimes: two writes within the file system's timestamp granularity must still differ.
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		tb.Fatal(err)
	}
}

// The model file places workloads on nodes; edits apply on the next request, a broken
// edit keeps the previous model.
func TestModelPods(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	writeModel(t, path, modelV1, base)
	m, err := ca.NewModelPods(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a := ca.PodAuthorizer{Pods: m}
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	echo := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/echo")
	check := func(node string, id spiffeid.ID, allowed bool) {
		t.Helper()
		err := a.Authorize(t.Context(), ca.Caller{Node: node}, id)
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
	if p, ok, err := m.Pod("default", "echo"); err != nil || !ok || p.ServiceAccount != "echo" || p.UID != "default/echo" {
		t.Errorf("pod default/echo: %+v, %v, %v", p, ok, err)
	}
	if _, ok, err := m.Pod("default", "none"); ok || err != nil {
		t.Errorf("pod default/none: found %v, %v", ok, err)
	}

	// The echo workload moves to node1: picked up on the next request.
	writeModel(t, path, strings.Replace(modelV1, "node: node2", "node: node1", 1), base.Add(time.Second))
	check("node1", echo, true)
	check("node2", echo, false)

	// A broken model keeps the previous one in force; so does a deleted file.
	writeModel(t, path, "workloads: [", base.Add(2*time.Second))
	check("node1", echo, true)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	check("node1", echo, true)

	// A missing or broken model at start is an error.
	if _, err := ca.NewModelPods(filepath.Join(t.TempDir(), "none.yaml"), nil); err == nil {
		t.Error("missing model accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeModel(t, bad, "workloads: [", base)
	if _, err := ca.NewModelPods(bad, nil); err == nil {
		t.Error("broken model accepted")
	}
}

// Node authorization as a node sees it: through the server, authenticated by its token.
func TestServerNodeScoped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeModel(t, path, modelV1, time.Now())
	pods, err := ca.NewModelPods(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerWith(t, "node1 tok1\nnode2 tok2\nnode3 tok3\n", ca.PodAuthorizer{Pods: pods})
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	echo := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/echo")
	tests := []struct {
		name    string
		token   string
		id      spiffeid.ID
		wantErr string // "" allowed; "forbidden" ErrNotAuthorized
	}{
		{"own workload", "tok1", client, ""},
		{"other node's workload", "tok1", echo, "forbidden"},
		{"node running nothing", "tok3", client, "forbidden"},
		{"bad token", "tok9", client, "rejected the token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ts.client(t, tt.token).Issue(t.Context(), tt.id, newCSR(t, p256(t)))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.wantErr == "forbidden" && !errors.Is(err, identity.ErrNotAuthorized):
				t.Fatalf("%v, want ErrNotAuthorized", err)
			case tt.wantErr != "" && tt.wantErr != "forbidden" && (err == nil || errors.Is(err, identity.ErrNotAuthorized) || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("%v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "ca.sock")
	// A socket left by a previous run is replaced.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l, err := ca.Listen("unix://" + sock)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l.Close()
	l, err = ca.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	// A file that is not a socket is left alone.
	regular := filepath.Join(dir, "file")
	writeFile(t, regular, "x", 0o600)
	for _, addr := range []string{"unix://relative.sock", "unix://" + regular, "nocolon"} {
		if l, err := ca.Listen(addr); err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", addr)
		}
	}
}
