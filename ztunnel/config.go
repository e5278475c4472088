package ztunnel

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/internal/flagvalue"
	"github.com/ambitmesh/ambit/internal/serve"
	"github.com/ambitmesh/ambit/policy"
	"github.com/ambitmesh/ambit/redirect"
)

// Default ports, as in Istio's ztunnel: the capture listeners' are the eBPF
// programs', the HTTP endpoints' those of every data-plane process.
const (
	PortOutbound  = redirect.DefaultOutboundPort
	PortInbound   = redirect.DefaultInboundPort
	PortHBONE     = redirect.DefaultHBONEPort
	PortMetrics   = serve.PortMetrics
	PortReadiness = serve.PortReadiness
	PortAdmin     = serve.PortAdmin
)

// ztunnel's own defaults; the capture's are redirect's, the HTTP endpoints' serve's.
const (
	defaultUplink               = "eth0" // -uplinks only: a zero Config captures on no uplink
	defaultConnectTimeout       = 5 * time.Second
	defaultDrainTimeout         = 5 * time.Second
	defaultReconcileInterval    = 5 * time.Second
	defaultHBONEConnsPerPeer    = 4
	defaultHBONEPoolIdleTimeout = time.Minute
)

// Config is everything ztunnel needs to run on one node. Zero values take the defaults
// (WithDefaults), which are also the flags' (docs/operations.md).
type Config struct {
	// NodeName is the node this ztunnel serves; only workloads the model places on it are captured.
	NodeName string
	// TrustDomain of the mesh, e.g. "cluster.local".
	TrustDomain string

	// ModelPath is the YAML mesh model (local mode); unused when another model source
	// (Kubernetes) is supplied.
	ModelPath  string
	Enrollment discovery.EnrollmentOptions
	// PolicyPath is a file or directory of PeerAuthentication and AuthorizationPolicy
	// manifests (local mode), reloaded with the model.
	PolicyPath string
	// RootNamespace is the policies' root namespace: its policies apply mesh-wide.
	RootNamespace string

	// CAAddr is the built-in CA ("unix:///path" or "host:port"); CATokenFile authenticates this node
	// to it; CARootFile holds the PEM root used to verify the CA and to seed the trust bundle.
	CAAddr      string
	CATokenFile string
	CARootFile  string

	// Capture settings.
	Uplinks    []string
	BPFPinPath string
	Mark       uint32
	MarkMask   uint32
	RouteTable int

	// Listener addresses. The capture listeners are transparent and bound to loopback.
	OutboundAddr netip.AddrPort
	InboundAddr  netip.AddrPort
	HBONEAddr    netip.AddrPort
	// HTTP is where readiness, metrics and admin are served.
	HTTP serve.Config

	// ConnectTimeout bounds dialing an upstream (HBONE peer or pod): for a service, all
	// the endpoints a connection tries.
	ConnectTimeout time.Duration
	// ConnectAttempts is how many of a service's endpoints one connection may try, in
	// all, before it is refused (1 to 8; default 3). Only connects are retried, never a
	// connection that relayed anything.
	ConnectAttempts int
	// EndpointBackoff is how long a service endpoint whose connect failed is passed over
	// (while another is healthy); each further consecutive failure doubles it, up to
	// EndpointBackoffMax. Defaults 1s and 30s.
	EndpointBackoff    time.Duration
	EndpointBackoffMax time.Duration
	// DrainTimeout is how long shutdown waits for open connections.
	DrainTimeout time.Duration
	// ReconcileInterval re-checks enrollment even without model changes (pod interfaces may
	// appear after the model names the pod).
	ReconcileInterval time.Duration
	// HBONEConnsPerPeer is how many HBONE connections concurrent streams between one pair
	// of identities to one peer may spread over (each connection's TLS is one core's
	// work at each end).
	HBONEConnsPerPeer int
	// HBONEPoolIdleTimeout is how long a pooled HBONE connection to a peer stays open
	// without streams before it is closed (Istio's ztunnel: POOL_UNUSED_RELEASE_TIMEOUT).
	HBONEPoolIdleTimeout time.Duration
	// MaxStreamsPerPeer caps the concurrent inbound HBONE streams of one peer identity
	// over all its connections; MaxUpstreamsPerPeer the sockets to local pods held open
	// on one identity's behalf (docs/operations.md, "Per-peer limits").
	MaxStreamsPerPeer   int
	MaxUpstreamsPerPeer int
	// AllowWaypointBypass turns off the check that a destination behind a waypoint is
	// reached only from that waypoint's pods (flag -waypoint-bypass-check=false), which
	// is Istio's behaviour. Traffic to a bound destination still goes to its waypoint.
	AllowWaypointBypass bool
	// DataPath picks the fast paths' implementation: DataPathFast (the default) or the
	// standard library's DataPathStd.
	DataPath DataPath
}

// maxConnsPerPeer bounds HBONEConnsPerPeer: more connections than cores buys nothing.
const maxConnsPerPeer = 64

// ErrConfig marks invalid configuration.
var ErrConfig = errors.New("invalid configuration")

// WithDefaults returns c with unset fields filled in.
func (c Config) WithDefaults() Config {
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	c.Enrollment = c.Enrollment.WithDefaults()
	if c.RootNamespace == "" {
		c.RootNamespace = policy.DefaultRootNamespace
	}
	if c.BPFPinPath == "" {
		c.BPFPinPath = redirect.DefaultPinPath
	}
	// Unlike redirect, which takes a lone mark as its own mask, a lone mark here keeps
	// the default mask (and must fit in it).
	if c.Mark == 0 {
		c.Mark = redirect.DefaultMark
	}
	if c.MarkMask == 0 {
		c.MarkMask = redirect.DefaultMarkMask
	}
	if c.RouteTable == 0 {
		c.RouteTable = redirect.DefaultRouteTable
	}
	loopback := netip.MustParseAddr("127.0.0.1")
	if !c.OutboundAddr.IsValid() {
		c.OutboundAddr = netip.AddrPortFrom(loopback, PortOutbound)
	}
	if !c.InboundAddr.IsValid() {
		c.InboundAddr = netip.AddrPortFrom(loopback, PortInbound)
	}
	if !c.HBONEAddr.IsValid() {
		c.HBONEAddr = netip.AddrPortFrom(loopback, PortHBONE)
	}
	c.HTTP = c.HTTP.WithDefaults()
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.ConnectAttempts == 0 {
		c.ConnectAttempts = defaultConnectAttempts
	}
	if c.EndpointBackoff == 0 {
		c.EndpointBackoff = defaultEndpointBackoff
	}
	if c.EndpointBackoffMax == 0 {
		c.EndpointBackoffMax = max(defaultEndpointBackoffMax, c.EndpointBackoff)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = defaultDrainTimeout
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = defaultReconcileInterval
	}
	if c.HBONEConnsPerPeer == 0 {
		c.HBONEConnsPerPeer = defaultHBONEConnsPerPeer
	}
	if c.HBONEPoolIdleTimeout == 0 {
		c.HBONEPoolIdleTimeout = defaultHBONEPoolIdleTimeout
	}
	if c.MaxStreamsPerPeer == 0 {
		c.MaxStreamsPerPeer = defaultMaxStreamsPerPeer
	}
	if c.MaxUpstreamsPerPeer == 0 {
		c.MaxUpstreamsPerPeer = defaultMaxUpstreamsPerPeer
	}
	return c
}

// RegisterFlags registers ztunnel's flags on fs, each defaulting to c's value with the
// defaults filled in (WithDefaults), -node to $NODE_NAME and -uplinks to eth0.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	*c = c.WithDefaults()
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	fs.StringVar(&c.NodeName, "node", c.NodeName, "name of this node in the mesh model (env NODE_NAME)")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "SPIFFE trust domain")
	fs.StringVar(&c.ModelPath, "model", c.ModelPath, "path of the YAML mesh model (local mode)")
	fs.StringVar(&c.PolicyPath, "policies", c.PolicyPath, "file or directory of PeerAuthentication and AuthorizationPolicy manifests (local mode)")
	fs.StringVar(&c.RootNamespace, "root-namespace", c.RootNamespace, "namespace whose policies apply to the whole mesh")
	e := &c.Enrollment
	fs.Var(flagvalue.KeyValueVar(&e.NamespaceLabel, &e.EnrollValue), "enroll-namespace-label", "namespace label key=value that enrolls a namespace's pods")
	fs.Var(flagvalue.KeyValueVar(&e.PodLabel, &e.OptOutValue), "opt-out-pod-label", "pod label key=value that opts a pod out")
	fs.StringVar(&c.CAAddr, "ca-addr", c.CAAddr, `built-in CA address ("unix:///path" or "host:port")`)
	fs.StringVar(&c.CATokenFile, "ca-token-file", c.CATokenFile, "file holding this node's bearer token for the CA")
	fs.StringVar(&c.CARootFile, "ca-root-file", c.CARootFile, "PEM file with the mesh root certificate(s)")
	c.RegisterCaptureFlags(fs)
	fs.TextVar(&c.OutboundAddr, "outbound-addr", c.OutboundAddr, "transparent outbound listener")
	fs.TextVar(&c.InboundAddr, "inbound-addr", c.InboundAddr, "transparent inbound plaintext listener")
	fs.TextVar(&c.HBONEAddr, "hbone-addr", c.HBONEAddr, "transparent inbound HBONE listener")
	c.HTTP.RegisterFlags(fs)
	fs.IntVar(&c.HBONEConnsPerPeer, "hbone-conns-per-peer", c.HBONEConnsPerPeer, "HBONE connections that concurrent streams to one peer (per pair of identities) may spread over")
	fs.DurationVar(&c.HBONEPoolIdleTimeout, "hbone-pool-idle-timeout", c.HBONEPoolIdleTimeout, "how long a pooled HBONE connection to a peer stays open without streams")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "how long shutdown waits for connections")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", c.ConnectTimeout, "how long connecting an upstream may take (for a service, all the endpoints tried)")
	fs.IntVar(&c.ConnectAttempts, "connect-attempts", c.ConnectAttempts, "service endpoints one connection may try before it is refused (1 to 8)")
	fs.DurationVar(&c.EndpointBackoff, "endpoint-backoff", c.EndpointBackoff, "how long a service endpoint whose connect failed is passed over; doubled per further failure")
	fs.DurationVar(&c.EndpointBackoffMax, "endpoint-backoff-max", c.EndpointBackoffMax, "longest a failing service endpoint is passed over")
	fs.IntVar(&c.MaxStreamsPerPeer, "max-streams-per-peer", c.MaxStreamsPerPeer, "concurrent inbound HBONE streams one peer identity may hold (over all its connections)")
	fs.IntVar(&c.MaxUpstreamsPerPeer, "max-upstreams-per-peer", c.MaxUpstreamsPerPeer, "sockets to local pods ztunnel holds open on one peer identity's behalf")
	fs.Var(inverted{&c.AllowWaypointBypass}, "waypoint-bypass-check", "refuse connections to a destination behind a waypoint that do not come from that waypoint (false: accept them, as Istio does)")
	fs.TextVar(&c.DataPath, "datapath", c.DataPath, `data path implementation: "fast" (own TLS records, raw sockets) or "std" (crypto/tls, net package sockets)`)
}

// inverted is a boolean flag that sets the negation of its field, so that the field's
// zero value (false) means the flag's default (true).
type inverted struct{ p *bool }

func (v inverted) String() string {
	if v.p == nil {
		return ""
	}
	return strconv.FormatBool(!*v.p)
}

func (v inverted) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*v.p = !b
	return nil
}

func (inverted) IsBoolFlag() bool { return true }

// RegisterCaptureFlags registers the flags that say what the capture installs on the
// node (-uplinks, -bpf-pin-path, -mark, -mark-mask, -route-table); RegisterFlags
// includes them, and ambitctl teardown takes the same ones to remove it.
func (c *Config) RegisterCaptureFlags(fs *flag.FlagSet) {
	*c = c.WithDefaults()
	if c.Uplinks == nil {
		c.Uplinks = []string{defaultUplink}
	}
	fs.Var(flagvalue.ListVar(&c.Uplinks), "uplinks", "comma-separated interfaces facing other nodes")
	fs.StringVar(&c.BPFPinPath, "bpf-pin-path", c.BPFPinPath, "bpffs directory for pinned programs, links and maps")
	fs.Var(flagvalue.Uint32Var(&c.Mark), "mark", "packet mark for captured traffic")
	fs.Var(flagvalue.Uint32Var(&c.MarkMask), "mark-mask", "mask of the mark bits ztunnel owns")
	fs.IntVar(&c.RouteTable, "route-table", c.RouteTable, "routing table for captured traffic")
}

// Validate reports the first problem with c, naming the field.
func (c Config) Validate() error {
	switch {
	case c.NodeName == "":
		return fmt.Errorf("%w: node name is required", ErrConfig)
	case c.HBONEConnsPerPeer < 0 || c.HBONEConnsPerPeer > maxConnsPerPeer:
		return fmt.Errorf("%w: hbone connections per peer %d: want 1 to %d", ErrConfig, c.HBONEConnsPerPeer, maxConnsPerPeer)
	case c.HBONEPoolIdleTimeout < 0:
		return fmt.Errorf("%w: hbone pool idle timeout %s: must not be negative", ErrConfig, c.HBONEPoolIdleTimeout)
	case c.ConnectTimeout < 0:
		return fmt.Errorf("%w: connect timeout %s: must not be negative", ErrConfig, c.ConnectTimeout)
	case c.ConnectAttempts < 0 || c.ConnectAttempts > maxConnectAttempts:
		return fmt.Errorf("%w: connect attempts %d: want 1 to %d", ErrConfig, c.ConnectAttempts, maxConnectAttempts)
	case c.EndpointBackoff < 0:
		return fmt.Errorf("%w: endpoint backoff %s: must not be negative", ErrConfig, c.EndpointBackoff)
	case c.EndpointBackoffMax < c.EndpointBackoff:
		return fmt.Errorf("%w: endpoint backoff max %s: below the endpoint backoff %s", ErrConfig, c.EndpointBackoffMax, c.EndpointBackoff)
	case c.MaxStreamsPerPeer < 0:
		return fmt.Errorf("%w: max streams per peer %d: must not be negative", ErrConfig, c.MaxStreamsPerPeer)
	case c.MaxUpstreamsPerPeer < 0:
		return fmt.Errorf("%w: max upstreams per peer %d: must not be negative", ErrConfig, c.MaxUpstreamsPerPeer)
	case !c.DataPath.valid():
		return fmt.Errorf("%w: unknown %s", ErrConfig, c.DataPath)
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("%w: trust domain %q: %v", ErrConfig, c.TrustDomain, err)
	}
	if c.MarkMask != 0 && c.Mark&^c.MarkMask != 0 {
		return fmt.Errorf("%w: mark %#x has bits outside mask %#x", ErrConfig, c.Mark, c.MarkMask)
	}
	for name, ap := range map[string]netip.AddrPort{"outbound": c.OutboundAddr, "inbound": c.InboundAddr, "hbone": c.HBONEAddr} {
		if ap.IsValid() && !ap.Addr().IsLoopback() {
			// The eBPF programs look listeners up by their bound tuple; a wildcard listener
			// would also accept direct connections to the node and loop.
			return fmt.Errorf("%w: %s listener %s must be bound to a loopback address", ErrConfig, name, ap)
		}
	}
	return nil
}
