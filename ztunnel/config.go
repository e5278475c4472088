package ztunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/discovery"
)

// Default ports, as in Istio's ztunnel.
const (
	PortOutbound  = 15001
	PortInbound   = 15006
	PortHBONE     = 15008
	PortMetrics   = 15020
	PortReadiness = 15021
	PortAdmin     = 15000
)

// Config is everything ztunnel needs to run on one node. Zero values take the defaults
// documented in docs/configuration.md.
type Config struct {
	// NodeName is the node this ztunnel serves; only workloads the model places on it are captured.
	NodeName string
	// TrustDomain of the mesh, e.g. "cluster.local".
	TrustDomain string

	// ModelPath is the YAML mesh model (local mode); unused when another model source
	// (Kubernetes) is supplied.
	ModelPath  string
	Enrollment discovery.EnrollmentOptions

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
	OutboundAddr  netip.AddrPort
	InboundAddr   netip.AddrPort
	HBONEAddr     netip.AddrPort
	ReadinessAddr string
	MetricsAddr   string
	AdminAddr     string

	// ConnectTimeout bounds dialing an upstream (HBONE peer or pod).
	ConnectTimeout time.Duration
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
}

// maxConnsPerPeer bounds HBONEConnsPerPeer: more connections than cores buys nothing.
const maxConnsPerPeer = 64

// ErrConfig marks invalid configuration.
var ErrConfig = errors.New("invalid configuration")

// WithDefaults returns c with unset fields filled in.
func (c Config) WithDefaults() Config {
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	c.Enrollment = c.Enrollment.WithDefaults()
	if c.BPFPinPath == "" {
		c.BPFPinPath = "/sys/fs/bpf/ambit"
	}
	if c.Mark == 0 {
		c.Mark = 0x400
	}
	if c.MarkMask == 0 {
		c.MarkMask = 0xf00
	}
	if c.RouteTable == 0 {
		c.RouteTable = 133
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
	if c.ReadinessAddr == "" {
		c.ReadinessAddr = fmt.Sprintf(":%d", PortReadiness)
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = fmt.Sprintf(":%d", PortMetrics)
	}
	if c.AdminAddr == "" {
		c.AdminAddr = fmt.Sprintf("127.0.0.1:%d", PortAdmin)
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 5 * time.Second
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 5 * time.Second
	}
	if c.HBONEConnsPerPeer == 0 {
		c.HBONEConnsPerPeer = 4
	}
	if c.HBONEPoolIdleTimeout == 0 {
		c.HBONEPoolIdleTimeout = time.Minute
	}
	return c
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
