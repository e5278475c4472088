package upstream

import (
	"math"
	"slices"
	"time"

	"github.com/ambitmesh/ambit/discovery"
)

// Istio's and Envoy's defaults (docs/resilience.md has the table).
const (
	// Unlimited is Istio's value for every circuit breaker it is not told about
	// (getDefaultCircuitBreakerThresholds): Envoy's own defaults (1024, 3 retries)
	// caused 503s during pod churn.
	Unlimited = math.MaxUint32

	DefaultConnectTimeout       = 10 * time.Second // MeshConfig.connectTimeout
	DefaultIdleTimeout          = time.Hour        // Envoy's HTTP idle_timeout
	DefaultTCPIdleTimeout       = time.Hour        // Envoy's tcp_proxy idle_timeout
	DefaultMaxConcurrentStreams = math.MaxInt32    // Envoy's HTTP/2 max_concurrent_streams

	DefaultChoiceCount = 2       // LEAST_REQUEST: power of two choices
	DefaultMinRingSize = 1024    // ring hash minimum_ring_size
	MaxRingSize        = 8 << 20 // ring hash maximum_ring_size (Envoy's default and Istio's only value)
	DefaultTableSize   = 65537   // Maglev table_size (a prime)
	maxTableSize       = 5000011 // Istio: the table size must be a prime below this

	DefaultConsecutive5xx                 = 5
	DefaultConsecutiveLocalOriginFailures = 5
	DefaultInterval                       = 10 * time.Second
	DefaultBaseEjectionTime               = 30 * time.Second
	DefaultMaxEjectionTime                = 300 * time.Second
	DefaultMaxEjectionPercent             = 10

	DefaultRetryBudgetPercent        = 20.0
	DefaultRetryBudgetMinConcurrency = 3

	// Overprovisioning is Envoy's default overprovisioning factor (140%): a
	// priority whose healthy share times 1.4 reaches 100% takes all its load.
	Overprovisioning = 140
)

// Algorithm is a load balancing algorithm.
type Algorithm int

// Algorithms, as Envoy names them.
const (
	// LeastRequest is Istio's default: power of two random choices, the one with
	// fewer active requests wins.
	LeastRequest Algorithm = iota
	RoundRobin
	Random
	// RingHash is Istio's default consistent hash: a ketama ring of xxHash64 points.
	RingHash
	// Maglev is Google's Maglev consistent hash table.
	Maglev
)

func (a Algorithm) String() string {
	switch a {
	case LeastRequest:
		return "LEAST_REQUEST"
	case RoundRobin:
		return "ROUND_ROBIN"
	case Random:
		return "RANDOM"
	case RingHash:
		return "RING_HASH"
	case Maglev:
		return "MAGLEV"
	}
	return "UNKNOWN"
}

// consistent says whether a picks by a request's hash key.
func (a Algorithm) consistent() bool { return a == RingHash || a == Maglev }

// Policy is the compiled traffic policy of one Service port; Istio's defaults
// where its DestinationRule is silent. A Policy is immutable once built.
type Policy struct {
	// Rule names the DestinationRule(s) it comes from, "namespace/name" joined by
	// ","; empty for the defaults.
	Rule     string
	LB       LoadBalancer
	Locality LocalityPolicy
	Limits   Limits
	// Outlier is nil when outlier detection is off (Istio: no outlierDetection).
	Outlier *Outlier
	// Subsets are the DestinationRule's subsets, each with its merged policy.
	// They apply only to traffic a route sends to the subset (as in Istio); the
	// Service port's own Cluster ignores them.
	Subsets []Subset

	// localityFromRule: the DestinationRule set localityLbSetting (or
	// zoneAwareLbSetting), which a Service's trafficDistribution does not override.
	localityFromRule bool
}

// LoadBalancer is how a host is chosen among the healthy hosts of a priority.
type LoadBalancer struct {
	Algorithm Algorithm
	// ChoiceCount is LEAST_REQUEST's number of random choices (2).
	ChoiceCount int
	// Hash is the request's hash key, for RingHash and Maglev; nil otherwise.
	// Without a key in the request (no such header, cookie, ...), picks are random.
	Hash *HashPolicy
	// MinRingSize is RingHash's minimum ring size (1024, at most MaxRingSize).
	MinRingSize uint64
	// TableSize is Maglev's table size (65537, a prime).
	TableSize uint64
}

// HashKind is what a consistent hash key is taken from.
type HashKind int

// Hash key sources (DestinationRule consistentHash).
const (
	// HashNone: consistentHash without a key; every pick is random.
	HashNone HashKind = iota
	HashHeader
	HashCookie
	HashSourceIP
	HashQueryParam
)

// HashPolicy says where a request's hash key comes from.
type HashPolicy struct {
	Kind HashKind
	// Name is the header, cookie or query parameter name.
	Name string
	// Cookie: Path, TTL and Attributes of a cookie the waypoint generates when the
	// request has none; only when HasTTL (a zero TTL makes a session cookie).
	Path       string
	TTL        time.Duration
	HasTTL     bool
	Attributes []CookieAttribute
}

// CookieAttribute is an extra attribute of a generated cookie.
type CookieAttribute struct{ Name, Value string }

// LocalityPolicy is Istio's localityLbSetting, relative to the waypoint's own
// locality.
type LocalityPolicy struct {
	// Enabled: the DestinationRule's enabled, else the mesh default (on).
	Enabled bool
	// Failover maps a source region to the region to fail over to first.
	Failover []Failover
	// FailoverPriority are ordered labels ("key" or "key=value"): endpoints
	// matching more of them, in order, come first.
	FailoverPriority []string
	// Distribute assigns traffic shares to localities; a locality it leaves
	// out gets nothing. Exclusive with Failover.
	Distribute []Distribute
	// Force applies priorities without outlier detection (a Service's
	// trafficDistribution does this in Istio).
	Force bool
}

// Failover is a region failover rule.
type Failover struct{ From, To string }

// Distribute is a locality weight rule: traffic from the From locality pattern
// goes to the To patterns in proportion to their weights (summing to 100).
type Distribute struct {
	From string
	To   []LocalityWeight
}

// LocalityWeight is one destination of a Distribute rule.
type LocalityWeight struct {
	Locality string
	Weight   uint32
}

// active says whether priorities apply: Istio fails over only with outlier
// detection (or when forced), since nothing else makes a host unhealthy.
func (l *LocalityPolicy) active(outlier bool) bool {
	return l.Enabled && len(l.Distribute) == 0 && (outlier || l.Force)
}

// Limits are the circuit breakers (per Cluster, as Envoy's thresholds) and the
// connection settings the waypoint's transport applies.
type Limits struct {
	// MaxConnections (tcp.maxConnections), MaxPendingRequests
	// (http.http1MaxPendingRequests), MaxRequests (http.http2MaxRequests) and
	// MaxRetries (http.maxRetries, concurrent): Unlimited by default.
	MaxConnections     uint32
	MaxPendingRequests uint32
	MaxRequests        uint32
	MaxRetries         uint32
	// RetryBudget, when set, replaces MaxRetries.
	RetryBudget *RetryBudget

	// MaxRequestsPerConnection: 0 is unlimited; 1 disables keep-alive.
	MaxRequestsPerConnection uint32
	ConnectTimeout           time.Duration
	// IdleTimeout closes an upstream HTTP connection without active requests
	// (http.idleTimeout, else tcp.idleTimeout, else 1 h); TCPIdleTimeout closes a
	// proxied TCP connection without traffic (tcp.idleTimeout; 0 disables).
	IdleTimeout           time.Duration
	TCPIdleTimeout        time.Duration
	MaxConnectionDuration time.Duration // 0: none
	MaxConcurrentStreams  uint32
	H2Upgrade             H2Upgrade
	UseClientProtocol     bool
	// HTTP2KeepAlive: PING interval and timeout, zero when unset.
	HTTP2KeepAliveInterval time.Duration
	HTTP2KeepAliveTimeout  time.Duration
	TCPKeepalive           *TCPKeepalive
}

// H2Upgrade is http.h2UpgradePolicy.
type H2Upgrade int

// H2 upgrade policies.
const (
	H2UpgradeDefault H2Upgrade = iota // the mesh default (do not upgrade)
	H2UpgradeNever                    // DO_NOT_UPGRADE
	H2UpgradeAlways                   // UPGRADE
)

// TCPKeepalive is tcp.tcpKeepalive; zero fields take the OS defaults.
type TCPKeepalive struct {
	Probes   uint32
	Time     time.Duration
	Interval time.Duration
}

// RetryBudget limits concurrent retries to Percent of the active and pending
// requests, but allows at least MinConcurrency (Envoy's retry_budget).
type RetryBudget struct {
	Percent        float64
	MinConcurrency uint32
}

// Outlier is the outlier detector's configuration (Envoy's, as Istio sets it).
type Outlier struct {
	// Consecutive5xx ejects after that many 5xx in a row (local-origin failures
	// count unless split); 0 is off.
	Consecutive5xx uint32
	// ConsecutiveGatewayErrors ejects after that many 502/503/504 in a row
	// (local-origin failures count unless split); 0 is off (Istio's default:
	// Envoy counts them but does not enforce).
	ConsecutiveGatewayErrors uint32
	// SplitExternalLocalOriginErrors counts connect failures, timeouts and
	// resets apart, against ConsecutiveLocalOriginFailures.
	SplitExternalLocalOriginErrors bool
	ConsecutiveLocalOriginFailures uint32
	// Interval is the sweep that returns hosts and decays ejection multipliers.
	Interval time.Duration
	// BaseEjectionTime times the host's ejection multiplier, capped by
	// MaxEjectionTime (300 s or BaseEjectionTime, the larger), is how long an
	// ejection lasts.
	BaseEjectionTime time.Duration
	MaxEjectionTime  time.Duration
	// MaxEjectionPercent: no ejection may take the ejected share of all hosts
	// above it.
	MaxEjectionPercent uint32
	// AlwaysEjectOneHost lets the first ejection through regardless of
	// MaxEjectionPercent (Envoy's always_eject_one_host; Istio never sets it).
	AlwaysEjectOneHost bool
	// MinHealthPercent is Envoy's panic threshold: below it a priority uses all
	// its hosts, ejected or not. Istio's default 0 disables panic.
	MinHealthPercent uint32
	// ErrorCodes, when set, are the only HTTP statuses that count as errors
	// (each as a 500); others count as successes.
	ErrorCodes []int
}

// Subset is a DestinationRule subset: the endpoints whose labels include
// Labels, with their own policy.
type Subset struct {
	Name   string
	Labels map[string]string
	Policy *Policy
}

// Subset returns the named subset, or nil.
func (p *Policy) Subset(name string) *Subset {
	for i := range p.Subsets {
		if p.Subsets[i].Name == name {
			return &p.Subsets[i]
		}
	}
	return nil
}

// Matches says whether an endpoint with labels belongs to the subset.
func (s *Subset) Matches(labels map[string]string) bool {
	for k, v := range s.Labels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// DefaultPolicy is the policy of a Service port without a DestinationRule, with
// locality load balancing on (Istio's mesh default).
func DefaultPolicy() *Policy { return defaultPolicy(true) }

func defaultPolicy(locality bool) *Policy {
	return &Policy{
		LB:       defaultLB(),
		Locality: LocalityPolicy{Enabled: locality},
		Limits:   defaultLimits(),
	}
}

func defaultLB() LoadBalancer {
	return LoadBalancer{Algorithm: LeastRequest, ChoiceCount: DefaultChoiceCount,
		MinRingSize: DefaultMinRingSize, TableSize: DefaultTableSize}
}

func defaultLimits() Limits {
	return Limits{
		MaxConnections:       Unlimited,
		MaxPendingRequests:   Unlimited,
		MaxRequests:          Unlimited,
		MaxRetries:           Unlimited,
		ConnectTimeout:       DefaultConnectTimeout,
		IdleTimeout:          DefaultIdleTimeout,
		TCPIdleTimeout:       DefaultTCPIdleTimeout,
		MaxConcurrentStreams: DefaultMaxConcurrentStreams,
	}
}

// DefaultOutlier is an outlierDetection block with no field set.
func DefaultOutlier() *Outlier {
	return &Outlier{
		Consecutive5xx:                 DefaultConsecutive5xx,
		ConsecutiveLocalOriginFailures: DefaultConsecutiveLocalOriginFailures,
		Interval:                       DefaultInterval,
		BaseEjectionTime:               DefaultBaseEjectionTime,
		MaxEjectionTime:                DefaultMaxEjectionTime,
		MaxEjectionPercent:             DefaultMaxEjectionPercent,
	}
}

// Labels of the topology that failoverPriority and trafficDistribution use;
// Ambit derives them from a Locality (and node) when an endpoint's or the
// waypoint's labels do not carry them, as Istio adds them to both.
const (
	LabelNetwork  = "topology.istio.io/network"
	LabelRegion   = "topology.kubernetes.io/region"
	LabelZone     = "topology.kubernetes.io/zone"
	LabelSubzone  = "topology.istio.io/subzone"
	LabelHostname = "kubernetes.io/hostname"
)

// Traffic distributions of Kubernetes Services (beyond discovery's).
const trafficDistributionPreferSameNode = "PreferSameNode"

// WithTrafficDistribution returns the policy for a Service with Kubernetes'
// spec.trafficDistribution td: as in Istio, PreferClose and PreferSameZone
// prefer the waypoint's network, region and zone, PreferSameNode also its
// subzone and node, with failover even without outlier detection, unless the
// DestinationRule set its own locality settings.
func (p *Policy) WithTrafficDistribution(td string) *Policy {
	var prio []string
	switch td {
	case discovery.TrafficDistributionPreferClose, discovery.TrafficDistributionPreferSameZone:
		prio = []string{LabelNetwork, LabelRegion, LabelZone}
	case trafficDistributionPreferSameNode:
		prio = []string{LabelNetwork, LabelRegion, LabelZone, LabelSubzone, LabelHostname}
	default:
		return p
	}
	if p.localityFromRule {
		return p
	}
	q := *p
	q.Locality = LocalityPolicy{Enabled: true, FailoverPriority: prio, Force: true}
	q.Subsets = slices.Clone(p.Subsets)
	return &q
}
