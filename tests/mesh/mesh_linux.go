// Package mesh runs a whole Ambit mesh on a netns topology: the built-in CA and one real
// ztunnel process per node, driven by a YAML model. End-to-end tests, benchmarks and
// `make demo` share it.
package mesh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	kubetest "github.com/ambitmesh/ambit/tests/kube"
	"github.com/ambitmesh/ambit/tests/netns"
	spiretest "github.com/ambitmesh/ambit/tests/spire"
	"github.com/ambitmesh/ambit/ztunnel"
)

// Options shapes a mesh.
type Options struct {
	Nodes, PodsPerNode int
	// Ztunnels names the nodes that run a ztunnel; nil means every node.
	Ztunnels []string
	// BinDir holds ztunnel and ambit-ca; empty means build them (see Build).
	BinDir string
	// Model builds the initial model for the topology; nil means DefaultModel.
	Model func(*netns.Topology) *Model
	// ExtraArgs are appended to every ztunnel command line.
	ExtraArgs []string
	// Kube runs the mesh on Kubernetes: a real kube-apiserver + etcd in the underlay, RBAC
	// from the Helm chart, the CA and ztunnels in Kubernetes mode. Model is unused; tests
	// create namespaces, pods and services through Mesh.Kube.
	Kube bool
	// IstioEcho builds Istio's echo server and client before the tests (IstioEchoBinaries),
	// and fortio, the resilience tests' faulty backends (FortioBinary).
	IstioEcho bool
	// SPIRE, if set, takes identities from a real SPIRE server and per-node agents instead
	// of the built-in CA.
	SPIRE *SPIREOptions
}

// Mesh is a running mesh.
type Mesh struct {
	Topo  *netns.Topology
	Dir   string
	Bin   string
	Model *Model
	// Kube is the cluster in Kubernetes mode.
	Kube *kubetest.Cluster
	// Spire, Agents (by node) and Entries (by "<ns>/<sa>@<node>") in SPIRE mode.
	Spire    *spiretest.Server
	Agents   map[string]*spiretest.Agent
	Entries  map[string]string
	spireDir string

	opts  Options
	bpffs string
	ca    *netns.Proc
	mu    sync.Mutex
	zt    map[string]*netns.Proc
	wp    map[string]*netns.Proc // waypoints, by pod name
	// policyRefs are the policies of each file written by ApplyPolicies.
	policyRefs  map[string][]string
	policyFiles map[string]string // their manifests
	closeMu     sync.Once
}

// TrustDomain of every test mesh.
const TrustDomain = "cluster.local"

// VIP returns the n-th service VIP (198.19.0.<10+n>).
func VIP(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + n)}) }

// DefaultModel puts every pod in the ambient-enrolled namespace "mesh" with a service
// account named after the pod.
func DefaultModel(t *netns.Topology) *Model {
	m := &Model{Namespaces: []Namespace{
		{Name: "mesh", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}},
		{Name: "plain"},
	}}
	for _, n := range t.Nodes {
		m.Nodes = append(m.Nodes, Node{Name: n.Name, Addresses: []netip.Addr{n.IP}})
		for _, p := range n.Pods {
			m.Workloads = append(m.Workloads, Workload{
				Name: p.Name, Namespace: "mesh", ServiceAccount: p.Name, Node: n.Name,
				IPs: []netip.Addr{p.IP}, Labels: map[string]string{"app": p.Name},
			})
		}
	}
	return m
}

// Build compiles ztunnel, waypoint, ambit-ca and ambitctl into dir.
func Build(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/ztunnel", "./cmd/waypoint", "./cmd/ambit-ca", "./cmd/ambitctl")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the ambit module")
	}
	return filepath.Dir(mod), nil
}

// Start builds the topology, starts the CA and the ztunnels, and waits until every
// ztunnel is ready.
func Start(ctx context.Context, opts Options) (_ *Mesh, err error) {
	topo, err := netns.Build(netns.Options{Nodes: opts.Nodes, PodsPerNode: opts.PodsPerNode})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ambit-mesh-")
	if err != nil {
		topo.Close()
		return nil, err
	}
	m := &Mesh{Topo: topo, Dir: dir, opts: opts, zt: map[string]*netns.Proc{}}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	m.Bin = opts.BinDir
	if m.Bin == "" {
		m.Bin = filepath.Join(dir, "bin")
		if err := Build(m.Bin); err != nil {
			return nil, err
		}
	}
	m.bpffs = filepath.Join(dir, "bpffs")
	if err := os.MkdirAll(m.bpffs, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpf", m.bpffs, "bpf", 0, "mode=0700"); err != nil {
		m.bpffs = ""
		return nil, fmt.Errorf("mount bpffs: %w", err)
	}
	if opts.Kube {
		if err := m.startKube(ctx); err != nil {
			return nil, err
		}
	} else {
		if opts.Model != nil {
			m.Model = opts.Model(topo)
		} else {
			m.Model = DefaultModel(topo)
		}
		if err := m.Apply(); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(m.PolicyDir(), 0o755); err != nil {
			return nil, err
		}
		if err := m.writeTokens(); err != nil {
			return nil, err
		}
	}
	if opts.SPIRE != nil {
		if err := m.startSPIRE(ctx); err != nil {
			return nil, err
		}
	} else if err := m.startCA(ctx); err != nil {
		return nil, err
	}
	for _, n := range topo.Nodes {
		if opts.Ztunnels != nil && !contains(opts.Ztunnels, n.Name) {
			continue
		}
		if err := m.StartZtunnel(ctx, n); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// Apply writes the model atomically; ztunnels and the CA pick it up live.
func (m *Mesh) Apply() error {
	path := m.ModelPath()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(m.Model.YAML()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ModelPath is the YAML model file.
func (m *Mesh) ModelPath() string { return filepath.Join(m.Dir, "mesh.yaml") }

// CASocket is the CA's unix socket; CARoot its root certificate file.
func (m *Mesh) CASocket() string { return filepath.Join(m.Dir, "ca.sock") }
func (m *Mesh) CARoot() string   { return filepath.Join(m.Dir, "ca", "root.pem") }

// TokenFile is the CA bearer token file of a node.
func (m *Mesh) TokenFile(node string) string { return filepath.Join(m.Dir, node+".token") }

func (m *Mesh) writeTokens() error {
	var lines strings.Builder
	for _, n := range m.Topo.Nodes {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		tok := hex.EncodeToString(b)
		fmt.Fprintf(&lines, "%s %s\n", n.Name, tok)
		if err := os.WriteFile(m.TokenFile(n.Name), []byte(tok+"\n"), 0o600); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(m.Dir, "tokens"), []byte(lines.String()), 0o600)
}

func (m *Mesh) startCA(ctx context.Context) error {
	args := []string{
		"-state-dir", filepath.Join(m.Dir, "ca"),
		"-trust-domain", TrustDomain,
		"-listen", "unix://" + m.CASocket(),
	}
	cmd := exec.Command(filepath.Join(m.Bin, "ambit-ca"), append(args,
		"-tokens", filepath.Join(m.Dir, "tokens"),
		"-model", m.ModelPath())...)
	if m.Kube != nil {
		// The CA reaches the API server from the underlay, as a control-plane pod would.
		cmd = m.Topo.Underlay.Command(context.Background(), filepath.Join(m.Bin, "ambit-ca"), append(args,
			"-kubeconfig", filepath.Join(m.Dir, "ca.kubeconfig"),
			"-token-audience", CAAudience,
			"-ztunnel-service-account", SystemNamespace+"/"+ZtunnelSA,
			"-root-configmap", SystemNamespace+"/"+RootConfigMap)...)
	}
	p, err := m.Topo.Start(cmd)
	if err != nil {
		return fmt.Errorf("start ambit-ca: %w", err)
	}
	m.ca = p
	return waitFor(ctx, p, 20*time.Second, func() bool {
		_, e1 := os.Stat(m.CARoot())
		_, e2 := os.Stat(m.CASocket())
		return e1 == nil && e2 == nil
	}, "ambit-ca")
}

// DataPathEnv names the environment variable that picks every ztunnel's and waypoint's
// -datapath ("fast" or "std"), so `make test` runs the end-to-end suites on both
// implementations.
const DataPathEnv = "AMBIT_TEST_DATAPATH"

// ZtunnelArgs is the command line of a node's ztunnel.
func (m *Mesh) ZtunnelArgs(n *netns.Node) []string {
	model := []string{"-model", m.ModelPath(), "-policies", m.PolicyDir()}
	if m.Kube != nil {
		model = []string{"-kubeconfig", filepath.Join(m.Dir, "ztunnel.kubeconfig")}
	}
	identity := []string{
		"-ca-addr", "unix://" + m.CASocket(),
		"-ca-token-file", m.TokenFile(n.Name),
		"-ca-root-file", m.CARoot(),
	}
	if m.Spire != nil {
		identity = m.spireArgs(n.Name)
	}
	args := []string{
		"-node", n.Name,
		"-trust-domain", TrustDomain,
		"-uplinks", n.Uplink,
		"-bpf-pin-path", filepath.Join(m.bpffs, n.Name),
		"-drain-timeout", "1s",
	}
	if dp := os.Getenv(DataPathEnv); dp != "" {
		args = append(args, "-datapath", dp)
	}
	args = append(args, model...)
	args = append(args, identity...)
	return append(args, m.opts.ExtraArgs...)
}

// StartZtunnel starts the node's ztunnel and waits until it is ready.
func (m *Mesh) StartZtunnel(ctx context.Context, n *netns.Node) error {
	cmd := n.Command(context.Background(), filepath.Join(m.Bin, "ztunnel"), m.ZtunnelArgs(n)...)
	p, err := m.Topo.Start(cmd)
	if err != nil {
		return fmt.Errorf("start ztunnel on %s: %w", n.Name, err)
	}
	m.mu.Lock()
	m.zt[n.Name] = p
	m.mu.Unlock()
	if err := waitFor(ctx, p, 30*time.Second, func() bool { return m.Ready(ctx, n) == nil }, "ztunnel on "+n.Name); err != nil {
		return err
	}
	want := os.Getenv(DataPathEnv)
	if want == "" {
		return nil
	}
	// The suites' second run must really be on that data path.
	d, err := m.Dump(ctx, n)
	if err != nil {
		return fmt.Errorf("config_dump of %s: %w", n.Name, err)
	}
	if d.DataPath != want {
		return fmt.Errorf("ztunnel on %s runs data path %q, want %q (%s)", n.Name, d.DataPath, want, DataPathEnv)
	}
	return nil
}

// Ztunnel returns the node's ztunnel process, or nil.
func (m *Mesh) Ztunnel(node string) *netns.Proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.zt[node]
}

// StopZtunnel stops it gracefully; KillZtunnel with SIGKILL (as a crash would).
func (m *Mesh) StopZtunnel(n *netns.Node) error { return m.endZtunnel(n, (*netns.Proc).Stop) }
func (m *Mesh) KillZtunnel(n *netns.Node) error { return m.endZtunnel(n, (*netns.Proc).Kill) }

func (m *Mesh) endZtunnel(n *netns.Node, end func(*netns.Proc) error) error {
	m.mu.Lock()
	p := m.zt[n.Name]
	delete(m.zt, n.Name)
	m.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no ztunnel running on %s", n.Name)
	}
	err := end(p)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil
	}
	return err
}

// HTTPClient talks HTTP from inside a node's network namespace.
func HTTPClient(ns *netns.NS) *http.Client {
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true},
	}
}

// Ready asks the node's ztunnel readiness endpoint.
func (m *Mesh) Ready(ctx context.Context, n *netns.Node) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", ztunnel.PortReadiness), nil)
	resp, err := HTTPClient(n.NS).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Dump fetches the node's /config_dump.
func (m *Mesh) Dump(ctx context.Context, n *netns.Node) (*ztunnel.ConfigDump, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/config_dump", ztunnel.PortAdmin), nil)
	resp, err := HTTPClient(n.NS).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var d ztunnel.ConfigDump
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	return &d, nil
}

// Metrics fetches the node's Prometheus text.
func (m *Mesh) Metrics(ctx context.Context, n *netns.Node) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", ztunnel.PortMetrics), nil)
	resp, err := HTTPClient(n.NS).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Logs returns the recent output of every process, for failure messages.
func (m *Mesh) Logs() string {
	var b strings.Builder
	if m.ca != nil {
		fmt.Fprintf(&b, "=== ambit-ca ===\n%s\n", m.ca.Output())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, p := range m.zt {
		fmt.Fprintf(&b, "=== ztunnel %s ===\n%s\n", name, p.Output())
	}
	for name, p := range m.wp {
		fmt.Fprintf(&b, "=== waypoint %s ===\n%s\n", name, p.Output())
	}
	return b.String()
}

// Close stops everything and removes the topology, pins and files.
func (m *Mesh) Close() error {
	var errs []error
	m.closeMu.Do(func() {
		m.mu.Lock()
		procs := m.zt
		m.zt = map[string]*netns.Proc{}
		for _, p := range m.wp {
			_ = p.Stop()
		}
		m.wp = nil
		m.mu.Unlock()
		for _, p := range procs {
			_ = p.Stop()
		}
		if m.ca != nil {
			_ = m.ca.Stop()
		}
		if err := m.closeSPIRE(); err != nil {
			errs = append(errs, err)
		}
		if m.Kube != nil {
			if err := m.Kube.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := m.Topo.Close(); err != nil {
			errs = append(errs, err)
		}
		if m.bpffs != "" {
			// Unmounting the bpffs drops every pin, so nothing of the capture outlives the test.
			if err := unix.Unmount(m.bpffs, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount bpffs: %w", err))
			}
		}
		if err := os.RemoveAll(m.Dir); err != nil {
			errs = append(errs, err)
		}
	})
	return errors.Join(errs...)
}

func waitFor(ctx context.Context, p *netns.Proc, timeout time.Duration, ok func() bool, what string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if ok() {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited before it was ready: %v\n%s", what, p.Wait(), p.Output())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s\n%s", what, timeout, p.Output())
		case <-t.C:
		}
	}
}

// DialFrom dials addr from inside a pod.
func DialFrom(ctx context.Context, p *netns.Pod, addr netip.AddrPort) (net.Conn, error) {
	return p.Dial(ctx, "tcp", addr.String())
}
