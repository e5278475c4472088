package spiretest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// Agent is a spire-agent for one node: join_token node attestor, disk key manager (so a
// restart resumes with the agent's SVID), unix workload attestor, and a Workload API and an
// admin (Delegated Identity API) socket.
type Agent struct {
	Node           string
	Dir            string
	WorkloadSocket string // Workload API, 0777
	AdminSocket    string // Delegated Identity API, 0770 root:root; not under WorkloadSocket's dir
	// SPIFFEID is the agent's own ID, spiffe://<td>/spire/agent/join_token/<token>; it has
	// the alias Server.NodeID(Node). It changes only when a restart has to attest anew.
	SPIFFEID string

	server    *Server
	delegates []string
	dataDir   string
	config    string
	tail      *netns.TailBuffer
	log       io.Writer

	mu    sync.Mutex
	token string
	proc  *tooling.Proc
}

// WorkloadAddr is the Workload API address for go-spiffe's workloadapi.WithAddr.
func (a *Agent) WorkloadAddr() string { return "unix://" + a.WorkloadSocket }

// AdminAddr is the Delegated Identity API address for grpc.NewClient.
func (a *Agent) AdminAddr() string { return "unix://" + a.AdminSocket }

// StartAgent runs an agent for node, attested with a join token minted with the alias
// NodeID(node), whose Delegated Identity API serves the callers holding one of the SPIFFE
// IDs in delegates (authorized_delegates). It waits until both sockets exist; the agent
// may still be syncing its entries then. Server.Close stops it.
func (s *Server) StartAgent(ctx context.Context, node string, delegates []string) (_ *Agent, err error) {
	ctx, cancel := tooling.WithDefaultTimeout(ctx, startTimeout)
	defer cancel()
	if _, err := spiffeid.FromSegments(s.td, "node", node); err != nil {
		return nil, fmt.Errorf("start agent: node name %q: %w", node, err)
	}
	for _, d := range delegates {
		if _, err := s.parseID(d); err != nil {
			return nil, fmt.Errorf("start agent %s: authorized delegate: %w", node, err)
		}
	}
	s.mu.Lock()
	for _, other := range s.agents {
		if other.Node == node {
			s.mu.Unlock()
			return nil, fmt.Errorf("start agent %s: the node already has an agent", node)
		}
	}
	s.mu.Unlock()
	if s.ws.Closed() {
		return nil, fmt.Errorf("start agent %s: server closed", node)
	}

	dir := filepath.Join(s.Dir, "agent-"+node)
	a := &Agent{
		Node: node,
		Dir:  dir,
		// Separate directories: SPIRE refuses an admin socket in or under the Workload API
		// socket's directory (workloads can reach that one).
		WorkloadSocket: filepath.Join(dir, "public", "api.sock"),
		AdminSocket:    filepath.Join(dir, "admin", "admin.sock"),
		server:         s,
		delegates:      append([]string(nil), delegates...),
		dataDir:        filepath.Join(dir, "data"),
		config:         filepath.Join(dir, "agent.conf"),
		tail:           &netns.TailBuffer{Max: 64 << 10},
	}
	for _, p := range []string{a.WorkloadSocket, a.AdminSocket} {
		if err := checkSocketPath(p); err != nil {
			return nil, fmt.Errorf("start agent %s: %w", node, err)
		}
	}
	for _, d := range []string{filepath.Dir(a.WorkloadSocket), filepath.Dir(a.AdminSocket), a.dataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("start agent %s: %w", node, err)
		}
	}
	bundle, err := s.Bundle(ctx)
	if err != nil {
		return nil, fmt.Errorf("start agent %s: %w", node, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bundle.pem"), bundlePEM(bundle), 0o644); err != nil {
		return nil, fmt.Errorf("start agent %s: write trust bundle: %w", node, err)
	}
	if a.log, err = s.ws.Log(filepath.Join(s.Dir, "agent-"+node+".log"), a.tail); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.agents = append(s.agents, a) // from here Logs shows it
	s.mu.Unlock()
	if err := a.Start(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// Start (re)starts a stopped or killed agent with its data directory, so it resumes with
// its cached SVID and keeps SPIFFEID. When that SVID is missing or about to expire it
// attests with a new join token with the same alias (a used token cannot be reused), and
// SPIFFEID changes. It waits until both sockets exist.
func (a *Agent) Start(ctx context.Context) error {
	ctx, cancel := tooling.WithDefaultTimeout(ctx, startTimeout)
	defer cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc != nil && !a.proc.Exited() {
		return fmt.Errorf("start agent %s: already running", a.Node)
	}
	if a.server.ws.Closed() {
		return fmt.Errorf("start agent %s: server closed", a.Node)
	}
	if svid, err := a.cachedSVID(); a.token == "" || err != nil || time.Until(svid.NotAfter) < 5*time.Second {
		tok, err := a.server.createJoinToken(ctx, a.Node)
		if err != nil {
			return fmt.Errorf("start agent %s: %w", a.Node, err)
		}
		a.token = tok
	}
	if err := os.WriteFile(a.config, []byte(a.agentConfig()), 0o600); err != nil {
		return fmt.Errorf("start agent %s: write config: %w", a.Node, err)
	}
	// A killed agent leaves its sockets behind; waiting for them must see new ones.
	for _, p := range []string{a.WorkloadSocket, a.AdminSocket} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("start agent %s: remove stale socket: %w", a.Node, err)
		}
	}
	s := a.server
	p, err := s.ws.Start("spire-agent "+a.Node, s.opts.Command(s.ws.Ctx, s.opts.Binaries.Agent, "run", "-config", a.config), a.log)
	if err != nil {
		return err
	}
	a.proc = p
	if err := a.waitSockets(ctx, p); err != nil {
		_ = p.Stop(syscall.SIGKILL, stopGrace)
		return fmt.Errorf("start agent %s: %w\nagent log:\n%s", a.Node, err, lastBytes(a.tail.String(), 4<<10))
	}
	// Attestation completes, and is stored, before the agent opens its sockets.
	svid, err := a.cachedSVID()
	if err != nil {
		_ = p.Stop(syscall.SIGKILL, stopGrace)
		return fmt.Errorf("start agent %s: %w", a.Node, err)
	}
	a.SPIFFEID = svid.URIs[0].String()
	return nil
}

func (a *Agent) agentConfig() string {
	s := a.server
	var b strings.Builder
	fmt.Fprintf(&b, "agent {\n")
	fmt.Fprintf(&b, "  data_dir = %s\n", hclString(a.dataDir))
	fmt.Fprintf(&b, "  log_level = %q\n", s.opts.LogLevel)
	fmt.Fprintf(&b, "  server_address = %q\n  server_port = %q\n", "127.0.0.1", s.Addr[strings.LastIndexByte(s.Addr, ':')+1:])
	fmt.Fprintf(&b, "  socket_path = %s\n", hclString(a.WorkloadSocket))
	fmt.Fprintf(&b, "  admin_socket_path = %s\n", hclString(a.AdminSocket))
	fmt.Fprintf(&b, "  trust_bundle_path = %s\n", hclString(filepath.Join(a.Dir, "bundle.pem")))
	fmt.Fprintf(&b, "  trust_domain = %q\n", s.TrustDomain)
	fmt.Fprintf(&b, "  join_token = %q\n", a.token)
	b.WriteString("  authorized_delegates = [")
	for i, d := range a.delegates {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", d)
	}
	b.WriteString("]\n")
	// The 5 s default delays every new entry, and the first SVID, by 5+ s.
	fmt.Fprintf(&b, "  experimental {\n    sync_interval = \"1s\"\n  }\n")
	fmt.Fprintf(&b, "}\n\nplugins {\n")
	fmt.Fprintf(&b, "  NodeAttestor \"join_token\" {\n    plugin_data {}\n  }\n")
	fmt.Fprintf(&b, "  KeyManager \"disk\" {\n    plugin_data {\n      directory = %s\n    }\n  }\n", hclString(a.dataDir))
	fmt.Fprintf(&b, "  WorkloadAttestor \"unix\" {\n    plugin_data {}\n  }\n")
	fmt.Fprintf(&b, "}\n")
	return b.String()
}

func (a *Agent) waitSockets(ctx context.Context, p *tooling.Proc) error {
	err := p.WaitFor(ctx, 50*time.Millisecond, time.Second, func(context.Context) error {
		for _, path := range []string{a.WorkloadSocket, a.AdminSocket} {
			if st, err := os.Stat(path); err != nil || st.Mode().Type() != os.ModeSocket {
				return fmt.Errorf("no socket %s yet", path)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for the agent's sockets: %w", err)
	}
	return nil
}

// cachedSVID reads the agent's own SVID from its data directory (agent-data.json, PEM).
func (a *Agent) cachedSVID() (*x509.Certificate, error) {
	data, err := os.ReadFile(filepath.Join(a.dataDir, "agent-data.json"))
	if err != nil {
		return nil, fmt.Errorf("read agent SVID: %w", err)
	}
	var stored struct {
		SVID [][]byte `json:"svid"`
	}
	if err := json.Unmarshal(data, &stored); err != nil {
		return nil, fmt.Errorf("parse agent-data.json: %w", err)
	}
	if len(stored.SVID) == 0 {
		return nil, errors.New("agent-data.json holds no SVID")
	}
	block, _ := pem.Decode(stored.SVID[0])
	if block == nil {
		return nil, errors.New("agent-data.json: SVID is not PEM")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse agent SVID: %w", err)
	}
	if len(c.URIs) != 1 {
		return nil, fmt.Errorf("agent SVID has %d URI SANs, want 1", len(c.URIs))
	}
	return c, nil
}

// Stop terminates the agent (TERM) and keeps its data directory, so Start resumes it. It
// is idempotent.
func (a *Agent) Stop() error { return a.signal(syscall.SIGTERM) }

// Kill kills the agent (KILL), leaving its sockets behind as a crash would.
func (a *Agent) Kill() error { return a.signal(syscall.SIGKILL) }

func (a *Agent) signal(sig syscall.Signal) error {
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop(sig, stopGrace)
}

// Running reports whether the agent process is alive.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc != nil && !a.proc.Exited()
}
