package spiretest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthv1 "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/tests/tooling"
)

// TunnelPath is the SPIFFE ID path of the node tunnel (ztunnel) that RegisterTunnel
// registers: its service account in the mesh's system namespace.
const TunnelPath = "/ns/ambit-system/sa/ambit-ztunnel"

// DefaultTrustDomain is the trust domain when Options.TrustDomain is empty.
const DefaultTrustDomain = "cluster.local"

// DefaultCATTL is the server's ca_ttl when Options.CATTL is zero.
const DefaultCATTL = 24 * time.Hour

// maxSocketPath is the longest usable unix socket path (sun_path is 108 bytes with the NUL).
const maxSocketPath = 107

// ErrEntryExists is returned (wrapped) by CreateEntry when an entry with the same SPIFFE ID,
// parent and selectors exists; the existing entry's ID is returned with it.
var ErrEntryExists = errors.New("registration entry already exists")

// Options configure StartServer. Zero values take the defaults.
type Options struct {
	// Dir holds the configurations, data, sockets and logs of the server and its agents;
	// default a temporary directory that Close removes. Keep it short: unix socket paths
	// under it must fit in 107 bytes.
	Dir string
	// TrustDomain is a bare name; default DefaultTrustDomain.
	TrustDomain string
	// SVIDTTL is the server's default_x509_svid_ttl (e.g. 30s for rotation tests); default
	// SPIRE's (1h). SPIRE backdates NotBefore by 10 s and the agent renews an SVID at half its
	// NotBefore-NotAfter lifetime, so an SVID is renewed (SVIDTTL-10s)/2 after issue: 10 s for
	// 30s, and on every 1 s sync for 10s or less.
	SVIDTTL time.Duration
	// CATTL is the server's ca_ttl; short values exercise CA rotation. SPIRE prepares the
	// next CA at half its lifetime (the bundle then has two roots), signs with it from five
	// sixths on, and keeps expired roots in the bundle for a while (measured with 90s: second
	// root at ~50 s, new issuer at ~80 s, a third root at ~100 s). Default DefaultCATTL.
	CATTL time.Duration
	// LogLevel of the server and the agents; default INFO.
	LogLevel string
	// Command creates the server and agent processes; default exec.CommandContext. They
	// must share a network namespace with this process (the agents and this package reach
	// the server on 127.0.0.1).
	Command func(ctx context.Context, name string, args ...string) *exec.Cmd
	// Binaries default to the cached ones (EnsureBinaries must have built them).
	Binaries Binaries
}

// Server is a running spire-server (sqlite datastore, join_token node attestor, memory key
// manager) and the agents started from it.
type Server struct {
	Dir         string
	TrustDomain string
	Addr        string // 127.0.0.1:port, the agents' server_address
	SocketPath  string // the server API socket (admin access, no authentication)

	opts Options
	td   spiffeid.TrustDomain
	ws   *tooling.Workspace // its context lives until Close; the processes' commands use it
	conn *grpc.ClientConn
	tail *netns.TailBuffer

	mu     sync.Mutex
	agents []*Agent
}

// StartServer runs spire-server and waits until its API reports SERVING (~1 s). Close it
// when done.
func StartServer(ctx context.Context, opts Options) (_ *Server, err error) {
	ctx, cancel := tooling.WithDefaultTimeout(ctx, startTimeout)
	defer cancel()
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("parse trust domain %q: %w", opts.TrustDomain, err)
	}
	if td.Name() != opts.TrustDomain {
		return nil, fmt.Errorf("trust domain %q: want a bare name such as %q", opts.TrustDomain, td.Name())
	}
	if opts.SVIDTTL < 0 || opts.CATTL < 0 {
		return nil, fmt.Errorf("negative TTL (SVIDTTL %v, CATTL %v)", opts.SVIDTTL, opts.CATTL)
	}
	if opts.CATTL == 0 {
		opts.CATTL = DefaultCATTL
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "INFO"
	}
	if opts.Command == nil {
		opts.Command = exec.CommandContext
	}
	if opts.Binaries == (Binaries{}) {
		opts.Binaries = cachedBinaries()
	}
	if missing := opts.Binaries.missing(); len(missing) > 0 {
		return nil, fmt.Errorf("spire binaries %v missing: run spiretest.EnsureBinaries or tests/tools/build.sh spire", missing)
	}

	ws, err := tooling.NewWorkspace(opts.Dir, "spiretest-", stopGrace)
	if err != nil {
		return nil, fmt.Errorf("create spire dir: %w", err)
	}
	s := &Server{
		Dir:         ws.Dir,
		TrustDomain: td.Name(),
		opts:        opts,
		td:          td,
		ws:          ws,
		tail:        &netns.TailBuffer{Max: 64 << 10},
	}
	defer tooling.CloseOnError(&err, s)
	if s.Dir, err = filepath.Abs(s.Dir); err != nil {
		return nil, fmt.Errorf("spire dir: %w", err)
	}
	dir := filepath.Join(s.Dir, "server")
	s.SocketPath = filepath.Join(dir, "api.sock")
	if err := checkSocketPath(s.SocketPath); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return nil, fmt.Errorf("create server dir: %w", err)
	}
	ports, err := tooling.FreeLoopbackPorts(1)
	if err != nil {
		return nil, err
	}
	port := ports[0]
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	config := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(config, []byte(s.serverConfig(dir, port)), 0o600); err != nil {
		return nil, fmt.Errorf("write server config: %w", err)
	}
	w, err := s.ws.Log(filepath.Join(s.Dir, "server.log"), s.tail)
	if err != nil {
		return nil, err
	}
	s.conn, err = grpc.NewClient("unix://"+s.SocketPath,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's default reconnect backoff grows to minutes; the socket appears within ~1 s.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("create server API client: %w", err)
	}
	p, err := s.ws.Start("spire-server", opts.Command(s.ws.Ctx, opts.Binaries.Server, "run", "-config", config), w)
	if err != nil {
		return nil, err
	}
	if err := s.waitHealthy(ctx, p); err != nil {
		return nil, err
	}
	return s, nil
}

// StartServerForTest is StartServer for a test: a server that does not start fails tb,
// and the server is closed at tb's cleanup, after logging the processes' output if the
// test failed.
func StartServerForTest(tb testing.TB, ctx context.Context, opts Options) *Server {
	tb.Helper()
	return tooling.StartForTest(tb, "spire server", func() (*Server, error) { return StartServer(ctx, opts) })
}

func (s *Server) serverConfig(dir string, port int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server {\n")
	fmt.Fprintf(&b, "  bind_address = %q\n  bind_port = %q\n", "127.0.0.1", strconv.Itoa(port))
	fmt.Fprintf(&b, "  socket_path = %s\n", hclString(s.SocketPath))
	fmt.Fprintf(&b, "  trust_domain = %q\n", s.TrustDomain)
	fmt.Fprintf(&b, "  data_dir = %s\n", hclString(filepath.Join(dir, "data")))
	fmt.Fprintf(&b, "  log_level = %q\n", s.opts.LogLevel)
	fmt.Fprintf(&b, "  ca_ttl = %q\n", s.opts.CATTL.String())
	if s.opts.SVIDTTL > 0 {
		fmt.Fprintf(&b, "  default_x509_svid_ttl = %q\n", s.opts.SVIDTTL.String())
	}
	// The 5 s default makes a new entry take 5+ s to reach the agents.
	fmt.Fprintf(&b, "  experimental {\n    cache_reload_interval = \"1s\"\n  }\n")
	fmt.Fprintf(&b, "}\n\nplugins {\n")
	fmt.Fprintf(&b, "  DataStore \"sql\" {\n    plugin_data {\n      database_type = \"sqlite3\"\n      connection_string = %s\n    }\n  }\n",
		hclString(filepath.Join(dir, "data", "datastore.sqlite3")))
	fmt.Fprintf(&b, "  NodeAttestor \"join_token\" {\n    plugin_data {}\n  }\n")
	fmt.Fprintf(&b, "  KeyManager \"memory\" {\n    plugin_data {}\n  }\n")
	fmt.Fprintf(&b, "}\n")
	return b.String()
}

func (s *Server) waitHealthy(ctx context.Context, p *tooling.Proc) error {
	health := healthv1.NewHealthClient(s.conn)
	err := p.WaitFor(ctx, pollInterval, time.Second, func(ctx context.Context) error {
		resp, err := health.Check(ctx, &healthv1.HealthCheckRequest{})
		switch {
		case err != nil:
			return err
		case resp.GetStatus() != healthv1.HealthCheckResponse_SERVING:
			return fmt.Errorf("status %v", resp.GetStatus())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for spire-server to be healthy: %w", err)
	}
	return nil
}

// Close stops the agents and the server and removes Dir if StartServer created it. It is
// idempotent.
func (s *Server) Close() error {
	err := s.ws.Close()
	if s.conn != nil {
		_ = s.conn.Close()
	}
	return err
}

// Logs returns the tails of the server's and the agents' output.
func (s *Server) Logs() string {
	var b strings.Builder
	b.WriteString("--- spire-server\n")
	b.WriteString(s.tail.String())
	s.mu.Lock()
	agents := s.agents
	s.mu.Unlock()
	for _, a := range agents {
		fmt.Fprintf(&b, "--- spire-agent %s\n", a.Node)
		b.WriteString(a.tail.String())
	}
	return b.String()
}

// NodeID is spiffe://<td>/node/<node>: the alias every agent of that node gets, and the
// parent ID of the entries of the pods running there.
func (s *Server) NodeID(node string) string {
	return "spiffe://" + s.TrustDomain + "/node/" + node
}

// TunnelID is the tunnel's SPIFFE ID, spiffe://<td>/ns/ambit-system/sa/ambit-ztunnel.
func (s *Server) TunnelID() string {
	return "spiffe://" + s.TrustDomain + TunnelPath
}

// RegisterTunnel registers the tunnel's own identity (TunnelID) on node, for processes
// running as uid. An existing identical entry is not an error.
//
// Tests run as root, so uid 0 makes every root process on that node the tunnel: fine for
// tests, not for production, where the selector must pin the tunnel itself (a k8s
// service-account or a unix:path selector).
func (s *Server) RegisterTunnel(ctx context.Context, node string, uid int) (string, error) {
	if uid < 0 {
		return "", fmt.Errorf("register tunnel on %s: negative uid %d", node, uid)
	}
	id := s.TunnelID()
	if _, err := s.CreateEntry(ctx, id, s.NodeID(node), []string{"unix:uid:" + strconv.Itoa(uid)}, 0); err != nil && !errors.Is(err, ErrEntryExists) {
		return "", err
	}
	return id, nil
}

// CreateEntry registers spiffeID for the workloads matching every selector ("type:value",
// e.g. "k8s:ns:foo") under parentID, typically NodeID(node). ttl is the entry's X.509-SVID
// TTL; zero takes the server default. It returns the entry's ID.
func (s *Server) CreateEntry(ctx context.Context, spiffeID, parentID string, selectors []string, ttl time.Duration) (string, error) {
	id, err := s.parseID(spiffeID)
	if err != nil {
		return "", fmt.Errorf("create entry: SPIFFE ID: %w", err)
	}
	parent, err := s.parseID(parentID)
	if err != nil {
		return "", fmt.Errorf("create entry %s: parent ID: %w", spiffeID, err)
	}
	if len(selectors) == 0 {
		return "", fmt.Errorf("create entry %s: no selectors", spiffeID)
	}
	sels := make([]*types.Selector, 0, len(selectors))
	for _, sel := range selectors {
		typ, value, ok := strings.Cut(sel, ":")
		if !ok || typ == "" || value == "" {
			return "", fmt.Errorf("create entry %s: selector %q: want type:value", spiffeID, sel)
		}
		sels = append(sels, &types.Selector{Type: typ, Value: value})
	}
	if ttl < 0 || ttl.Seconds() > float64(1<<31-1) {
		return "", fmt.Errorf("create entry %s: TTL %v out of range", spiffeID, ttl)
	}
	resp, err := entryv1.NewEntryClient(s.conn).BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{
		Entries: []*types.Entry{{
			SpiffeId:    apiID(id),
			ParentId:    apiID(parent),
			Selectors:   sels,
			X509SvidTtl: int32(ttl / time.Second),
		}},
	})
	if err != nil {
		return "", fmt.Errorf("create entry %s: %w", spiffeID, err)
	}
	if len(resp.GetResults()) != 1 {
		return "", fmt.Errorf("create entry %s: %d results, want 1", spiffeID, len(resp.GetResults()))
	}
	r := resp.GetResults()[0]
	switch codes.Code(r.GetStatus().GetCode()) {
	case codes.OK:
		return r.GetEntry().GetId(), nil
	case codes.AlreadyExists:
		return r.GetEntry().GetId(), fmt.Errorf("create entry %s: %w (%s)", spiffeID, ErrEntryExists, r.GetStatus().GetMessage())
	default:
		return "", fmt.Errorf("create entry %s: %v: %s", spiffeID, codes.Code(r.GetStatus().GetCode()), r.GetStatus().GetMessage())
	}
}

// DeleteEntry deletes the entry with the given ID.
func (s *Server) DeleteEntry(ctx context.Context, entryID string) error {
	if entryID == "" {
		return errors.New("delete entry: empty entry ID")
	}
	resp, err := entryv1.NewEntryClient(s.conn).BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: []string{entryID}})
	if err != nil {
		return fmt.Errorf("delete entry %s: %w", entryID, err)
	}
	for _, r := range resp.GetResults() {
		if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
			return fmt.Errorf("delete entry %s: %v: %s", entryID, c, r.GetStatus().GetMessage())
		}
	}
	return nil
}

// Bundle returns the trust domain's X.509 authorities (during a CA rotation, old and new).
func (s *Server) Bundle(ctx context.Context) ([]*x509.Certificate, error) {
	b, err := bundlev1.NewBundleClient(s.conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("get bundle: %w", err)
	}
	var certs []*x509.Certificate
	for _, a := range b.GetX509Authorities() {
		c, err := x509.ParseCertificate(a.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("parse bundle authority: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("get bundle: no X.509 authorities")
	}
	return certs, nil
}

// createJoinToken mints a single-use join token whose agent gets the alias NodeID(node).
func (s *Server) createJoinToken(ctx context.Context, node string) (string, error) {
	alias, err := s.parseID(s.NodeID(node))
	if err != nil {
		return "", fmt.Errorf("create join token for %s: %w", node, err)
	}
	tok, err := agentv1.NewAgentClient(s.conn).CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{
		Ttl:     600,
		AgentId: apiID(alias),
	})
	if err != nil {
		return "", fmt.Errorf("create join token for %s: %w", node, err)
	}
	return tok.GetValue(), nil
}

func (s *Server) parseID(id string) (spiffeid.ID, error) {
	parsed, err := spiffeid.FromString(id)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%q: %w", id, err)
	}
	if parsed.TrustDomain() != s.td {
		return spiffeid.ID{}, fmt.Errorf("%q is not in trust domain %s", id, s.TrustDomain)
	}
	return parsed, nil
}

func apiID(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

func bundlePEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// hclString quotes a path for an HCL configuration; Go's escapes are a subset of HCL's for
// the characters paths contain.
func hclString(s string) string { return strconv.Quote(s) }

func checkSocketPath(p string) error {
	if len(p) > maxSocketPath {
		return fmt.Errorf("unix socket path %s is %d bytes, over the %d-byte limit: use a shorter Options.Dir", p, len(p), maxSocketPath)
	}
	return nil
}

// Bounds of the waits for the processes.
const (
	startTimeout = time.Minute // StartServer and StartAgent, when their context has no deadline
	pollInterval = 100 * time.Millisecond
)

// stopGrace is how long a TERMed process gets before SIGKILL.
const stopGrace = 10 * time.Second

// lastBytes is the end of s, at most n bytes, for failure messages.
func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
