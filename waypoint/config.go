package waypoint

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/internal/serve"
)

// ErrConfig marks configuration errors.
var ErrConfig = errors.New("invalid waypoint configuration")

// Config configures a waypoint process.
type Config struct {
	// Name and Namespace name the waypoint (its Gateway) this process runs.
	Name      string
	Namespace string
	// ServiceAccount is the waypoint's identity (default Name, the service account a
	// waypoint Deployment runs as).
	ServiceAccount string
	TrustDomain    string
	// NodeName is the node the waypoint runs on (default $NODE_NAME): its locality is
	// the waypoint's, which locality load balancing starts from.
	NodeName string
	// ListenAddr is where HBONE is served (default ":15008").
	ListenAddr string

	// ModelPath and ManifestPath are the local mode's model and manifest files (the
	// same as ztunnel's -model and -policies).
	ModelPath     string
	ManifestPath  string
	RootNamespace string
	WaypointClass string
	Enrollment    discovery.EnrollmentOptions

	// CAAddr, CATokenFile and CARootFile reach the built-in CA, as for ztunnel.
	CAAddr      string
	CATokenFile string
	CARootFile  string

	// ConnectTimeout bounds a dial to a backend (Istio's default, 10 s).
	ConnectTimeout time.Duration
	DrainTimeout   time.Duration
	Serve          serve.Config
	// DataPath picks how HTTP/1.1 streams are served: DataPathFast (h1fast.go, the
	// default, which leaves what it does not handle to the std path) or DataPathStd
	// (net/http's server and ReverseProxy). HTTP/2 and gRPC always take the std path.
	DataPath string
}

// Data paths of Config.DataPath, named as ztunnel's -datapath.
const (
	DataPathStd  = "std"
	DataPathFast = "fast"
)

// Defaults.
const (
	DefaultListenAddr     = ":15008"
	DefaultConnectTimeout = 10 * time.Second
	DefaultDrainTimeout   = 5 * time.Second
)

// WithDefaults returns c with unset fields filled in.
func (c Config) WithDefaults() Config {
	if c.ServiceAccount == "" {
		c.ServiceAccount = c.Name
	}
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if c.WaypointClass == "" {
		c.WaypointClass = discovery.DefaultWaypointClass
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.DataPath == "" {
		c.DataPath = DataPathFast
	}
	c.Serve = c.Serve.WithDefaults()
	return c
}

// Validate reports the first problem of c (after WithDefaults).
func (c Config) Validate() error {
	switch {
	case c.Name == "" || c.Namespace == "":
		return fmt.Errorf("%w: -name and -namespace of the waypoint are required", ErrConfig)
	case c.ConnectTimeout < 0 || c.DrainTimeout < 0:
		return fmt.Errorf("%w: timeouts must not be negative", ErrConfig)
	case c.DataPath != DataPathStd && c.DataPath != DataPathFast:
		return fmt.Errorf("%w: -datapath %q: want %q or %q", ErrConfig, c.DataPath, DataPathFast, DataPathStd)
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("%w: -trust-domain %q: %v", ErrConfig, c.TrustDomain, err)
	}
	if _, err := identity.WorkloadID(spiffeid.RequireTrustDomainFromString(c.TrustDomain), c.Namespace, c.ServiceAccount); err != nil {
		return fmt.Errorf("%w: identity: %v", ErrConfig, err)
	}
	if _, err := netip.ParseAddrPort(c.ListenAddr); err != nil && c.ListenAddr[0] != ':' {
		return fmt.Errorf("%w: -listen %q: %v", ErrConfig, c.ListenAddr, err)
	}
	return nil
}

// RegisterFlags registers the waypoint's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	*c = c.WithDefaults()
	fs.StringVar(&c.Name, "name", c.Name, "name of the waypoint (its Gateway)")
	fs.StringVar(&c.Namespace, "namespace", c.Namespace, "namespace of the waypoint")
	fs.StringVar(&c.ServiceAccount, "service-account", "", "service account of the waypoint (default: its name)")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "SPIFFE trust domain")
	fs.StringVar(&c.NodeName, "node", os.Getenv("NODE_NAME"), "node of this waypoint's pod, for locality load balancing (env NODE_NAME)")
	fs.StringVar(&c.ListenAddr, "listen", c.ListenAddr, "HBONE listen address")
	fs.StringVar(&c.ModelPath, "model", c.ModelPath, "path of the YAML mesh model (local mode)")
	fs.StringVar(&c.ManifestPath, "policies", c.ManifestPath, "file or directory of Istio and Gateway API manifests (local mode)")
	fs.StringVar(&c.RootNamespace, "root-namespace", c.RootNamespace, "the mesh's root namespace (default istio-system)")
	fs.StringVar(&c.WaypointClass, "waypoint-class", c.WaypointClass, "GatewayClass of waypoints")
	fs.StringVar(&c.CAAddr, "ca-addr", c.CAAddr, `built-in CA address ("unix:///path" or "host:port")`)
	fs.StringVar(&c.CATokenFile, "ca-token-file", c.CATokenFile, "file holding the bearer token for the CA, read again for each request (on Kubernetes the pod's projected token)")
	fs.StringVar(&c.CARootFile, "ca-root-file", c.CARootFile, "PEM file with the mesh root certificate(s)")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", c.ConnectTimeout, "timeout of a dial to a backend")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "how long open connections may finish at shutdown")
	fs.StringVar(&c.DataPath, "datapath", c.DataPath, `HTTP/1.1 implementation: "fast" (own parser and upstream pool, the std path for what it does not handle) or "std" (net/http's server and ReverseProxy)`)
	c.Serve.RegisterFlags(fs)
}
