package upstream

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/discovery"
)

// Errors of Pick and the circuit breakers, with Envoy's response flags.
var (
	// ErrNoHealthyUpstream (UH): no endpoint, or all ejected and no panic.
	ErrNoHealthyUpstream = errors.New("no healthy upstream")
	// ErrOverflow (UO): a circuit breaker is open; errors.Is matches the
	// specific limit's errors too.
	ErrOverflow = errors.New("upstream overflow")
)

// ResponseFlag is Envoy's response flag for an error of this package: "UH",
// "UO", or "" for others.
func ResponseFlag(err error) string {
	switch {
	case errors.Is(err, ErrNoHealthyUpstream):
		return "UH"
	case errors.Is(err, ErrOverflow):
		return "UO"
	}
	return ""
}

// Endpoint is one endpoint of a Service port as the waypoint hands it in.
type Endpoint struct {
	Addr netip.AddrPort
	// Weight is the load balancing weight; 0 means 1.
	Weight   uint32
	Locality discovery.Locality
	// Node is the endpoint's node (the kubernetes.io/hostname label).
	Node string
	// Labels are the workload's labels (failoverPriority, subsets).
	Labels map[string]string
	// ID is the workload UID, for the waypoint's own use.
	ID string
}

// ClusterConfig configures a Cluster.
type ClusterConfig struct {
	// Name is the cluster's name in events and status, e.g.
	// "inbound-vip|80|http|reviews.default.svc.cluster.local".
	Name string
	// Policy is the port's policy; nil is DefaultPolicy.
	Policy *Policy
	// Locality, Labels and Node are the waypoint's own: priorities are relative
	// to them.
	Locality discovery.Locality
	Labels   map[string]string
	Node     string
	// Rand is the random source; nil uses math/rand/v2.
	Rand func() uint64
}

// Observer receives a Cluster's events. It is called synchronously, without
// the cluster's lock held; it must not block.
type Observer interface {
	ClusterEvent(Event)
}

// EventKind is what happened.
type EventKind int

// Event kinds.
const (
	// EventEjected: a host was ejected (Reason says why, Until when it returns).
	EventEjected EventKind = iota + 1
	// EventReturned: an ejected host is back in service.
	EventReturned
	// EventOverflow: a circuit breaker refused (Limit says which).
	EventOverflow
)

// Event is one observed change of a Cluster.
type Event struct {
	Kind    EventKind
	Cluster string
	Addr    netip.AddrPort // EventEjected, EventReturned
	Reason  EjectReason    // EventEjected
	Until   time.Time      // EventEjected: earliest return (at an interval sweep)
	Limit   Limit          // EventOverflow
}

// EjectReason is the detector that ejected a host.
type EjectReason int

// Ejection reasons, as Envoy's ejection types.
const (
	EjectConsecutive5xx EjectReason = iota
	EjectConsecutiveGatewayFailure
	EjectConsecutiveLocalOriginFailure
)

func (r EjectReason) String() string {
	switch r {
	case EjectConsecutive5xx:
		return "consecutive_5xx"
	case EjectConsecutiveGatewayFailure:
		return "consecutive_gateway_failure"
	case EjectConsecutiveLocalOriginFailure:
		return "consecutive_local_origin_failure"
	}
	return "unknown"
}

// Cluster is the live state of one Service port: its hosts, their load and
// health, and the circuit breakers. All methods are safe for concurrent use;
// Pick, Host.Start and the breakers take no lock.
type Cluster struct {
	name  string
	local local
	obs   Observer
	rnd   func() uint64

	pol   atomic.Pointer[Policy]
	state atomic.Pointer[pickState]
	rr    atomic.Uint64

	breakers breakers

	mu      sync.Mutex
	hosts   map[netip.AddrPort]*Host
	order   []*Host // Update's order
	timer   *time.Timer
	closed  bool
	ejected int // hosts ejected now
	stats   outlierStats
}

// local is the waypoint's place, with the topology labels derived from it.
type local struct {
	locality discovery.Locality
	labels   map[string]string
}

// NewCluster returns a cluster with no endpoints; obs may be nil. With
// outlier detection it arms the interval timer: Close stops it.
func NewCluster(cfg ClusterConfig, obs Observer) *Cluster {
	c := &Cluster{
		name:  cfg.Name,
		local: local{locality: cfg.Locality, labels: topologyLabels(cfg.Labels, cfg.Locality, cfg.Node)},
		obs:   obs,
		rnd:   cfg.Rand,
		hosts: map[netip.AddrPort]*Host{},
	}
	if c.rnd == nil {
		c.rnd = rand.Uint64
	}
	pol := cfg.Policy
	if pol == nil {
		pol = DefaultPolicy()
	}
	c.mu.Lock()
	c.setPolicyLocked(pol)
	c.rebuildLocked()
	c.mu.Unlock()
	return c
}

func (c *Cluster) rand() uint64 { return c.rnd() }

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.name }

// Policy is the cluster's current policy.
func (c *Cluster) Policy() *Policy { return c.pol.Load() }

// Update replaces the policy (nil keeps it) and the endpoints. A host that
// stays (same address) keeps its active requests, counters and ejection; a
// new one takes load at once; a removed one keeps serving its requests in
// flight (their done functions still work) but is never picked again.
func (c *Cluster) Update(pol *Policy, eps []Endpoint) {
	c.mu.Lock()
	if pol != nil {
		c.setPolicyLocked(pol)
	}
	seen := make(map[netip.AddrPort]bool, len(eps))
	order := make([]*Host, 0, len(eps))
	for i := range eps {
		ep := eps[i]
		if seen[ep.Addr] || !ep.Addr.IsValid() {
			continue
		}
		seen[ep.Addr] = true
		ep.Weight = max(ep.Weight, 1)
		h := c.hosts[ep.Addr]
		if h == nil {
			h = &Host{c: c, addr: ep.Addr, key: ep.Addr.String(), member: true}
			c.hosts[ep.Addr] = h
		}
		ep.Labels = topologyLabels(ep.Labels, ep.Locality, ep.Node)
		h.ep.Store(&ep)
		order = append(order, h)
	}
	for addr, h := range c.hosts {
		if !seen[addr] {
			if h.ejected {
				c.ejected--
			}
			h.member, h.ejected = false, false
			delete(c.hosts, addr)
		}
	}
	c.order = order
	c.rebuildLocked()
	c.mu.Unlock()
}

// setPolicyLocked installs pol and (re)arms or stops the interval timer.
func (c *Cluster) setPolicyLocked(pol *Policy) {
	old := c.pol.Swap(pol)
	if c.closed {
		return
	}
	od := pol.Outlier
	switch {
	case od == nil:
		if c.timer != nil {
			c.timer.Stop()
			c.timer = nil
		}
		// No detector, no ejections (Envoy drops the detector with its config).
		for _, h := range c.order {
			h.ejected = false
			h.backoff = 0
		}
		c.ejected = 0
	case c.timer == nil:
		c.timer = time.AfterFunc(od.Interval, c.onInterval)
	case old == nil || old.Outlier == nil || old.Outlier.Interval != od.Interval:
		c.timer.Reset(od.Interval)
	}
}

// Close stops the cluster's timer; picks still work. It is idempotent.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
}

// PickRequest is what a pick needs of the request.
type PickRequest struct {
	// Hash is the request's hash key (HashPolicy.Key), for consistent hash
	// algorithms; without HasHash the pick is random.
	Hash    uint64
	HasHash bool
	// Exclude are hosts already tried for this request (Istio's previous_hosts
	// retry predicate): another host of the chosen priority is picked while
	// there is one.
	Exclude []*Host
}

// hostSelectionAttempts is Istio's host_selection_retry_max_attempts (5) plus
// the first pick.
const hostSelectionAttempts = 6

// Pick chooses a host for a request: a priority by Envoy's priority load (the
// request's hash, else a random number), then a host among that priority's
// healthy hosts (all of them in panic) by the policy's algorithm.
func (c *Cluster) Pick(r PickRequest) (*Host, error) {
	st := c.state.Load()
	if st.total == 0 {
		return nil, ErrNoHealthyUpstream
	}
	hash := r.Hash
	if !r.HasHash {
		hash = c.rand()
	}
	ps := st.prios[st.choosePriority(hash)]
	if len(ps.use) == 0 {
		return nil, ErrNoHealthyUpstream
	}
	first := ps.pick(c, hash, 0)
	if len(r.Exclude) == 0 || !excluded(first, r.Exclude) {
		return first, nil
	}
	for attempt := 1; attempt < hostSelectionAttempts; attempt++ {
		if !r.HasHash {
			hash = c.rand()
		}
		if h := ps.pick(c, hash, attempt); !excluded(h, r.Exclude) {
			return h, nil
		}
	}
	// The draws kept landing on tried hosts: take any other, if one is left.
	start := bounded(c.rand(), len(ps.use))
	for i := range ps.use {
		if h := ps.use[(start+i)%len(ps.use)]; !excluded(h, r.Exclude) {
			return h, nil
		}
	}
	return first, nil
}

func excluded(h *Host, ex []*Host) bool {
	for _, x := range ex {
		if x == h {
			return true
		}
	}
	return false
}

// Host is one endpoint of a Cluster. Its pointer stays valid after it is
// removed from the cluster.
type Host struct {
	c    *Cluster
	addr netip.AddrPort
	key  string // addr.String(): what the hash algorithms hash
	ep   atomic.Pointer[Endpoint]

	active    atomic.Int64
	requests  atomic.Uint64
	failures  atomic.Uint64 // results the detector counted as errors
	cons5xx   atomic.Uint32
	consGw    atomic.Uint32
	consLocal atomic.Uint32

	// Guarded by c.mu.
	member       bool
	ejected      bool
	ejectedAt    time.Time
	backoff      uint32 // Envoy's ejection time multiplier
	timesEjected uint32
	lastReturn   time.Time // zero: never returned
	priority     int
}

// Addr is the endpoint's address.
func (h *Host) Addr() netip.AddrPort { return h.addr }

// Endpoint is the endpoint as last updated (Labels include the derived
// topology labels).
func (h *Host) Endpoint() Endpoint { return *h.ep.Load() }

// Active is the number of requests in flight on the host.
func (h *Host) Active() int64 { return h.active.Load() }

// LocalOrigin is a failure the waypoint saw itself, with no response.
type LocalOrigin int

// Local-origin failures (Envoy's locally originated errors).
const (
	LocalNone LocalOrigin = iota
	ConnectFailed
	Timeout
	Reset
)

// Result is the outcome of one request (or TCP connection) to a host.
type Result struct {
	// Status is the HTTP status, 0 when there was none.
	Status int
	// Local is set when the request failed before a response.
	Local LocalOrigin
}

// Start counts a request on the host (LEAST_REQUEST's active requests) and
// returns the function that ends it with its result, which feeds the outlier
// detector. A zero Result is a success without HTTP (a TCP connection that
// worked). Calling done again does nothing.
func (h *Host) Start() (done func(Result)) {
	h.active.Add(1)
	var once atomic.Bool
	return func(r Result) {
		if !once.Swap(true) {
			h.finish(r)
		}
	}
}
