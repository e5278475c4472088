package ztunnel

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambitmesh/ambit/discovery"
)

// Service endpoints whose connects fail are passed over for a while, as kube-proxy
// users expect of a dead pod that has not left the EndpointSlice yet: the first
// failure keeps an endpoint out for defaultEndpointBackoff, each further consecutive
// one twice as long, up to defaultEndpointBackoffMax (Config.EndpointBackoff,
// EndpointBackoffMax). Afterwards the endpoint is tried again; a success clears it.
const (
	defaultEndpointBackoff    = time.Second
	defaultEndpointBackoffMax = 30 * time.Second
	// defaultConnectAttempts is how many endpoints one connection may try before it is
	// refused (Config.ConnectAttempts); maxConnectAttempts bounds it, and the record's
	// list of the endpoints tried.
	defaultConnectAttempts = 3
	maxConnectAttempts     = 8
)

// endpointHealth is ztunnel's memory of failing service endpoints, keyed by address.
// Only failing endpoints have an entry, and entries of endpoints that left the model
// are dropped (prune), so it stays as small as the set of endpoints currently failing.
type endpointHealth struct {
	base, max time.Duration

	// n is len(bad), read without mu: while nothing fails (nearly always), picking an
	// endpoint takes no lock.
	n   atomic.Int32
	mu  sync.Mutex
	bad map[netip.Addr]*endpointState
}

// endpointState is one failing endpoint.
type endpointState struct {
	failures int       // consecutive connect failures
	until    time.Time // passed over until then
	reason   string    // the last failure's reason label
}

func newEndpointHealth(base, max time.Duration) *endpointHealth {
	return &endpointHealth{base: base, max: max, bad: map[netip.Addr]*endpointState{}}
}

// empty reports whether no endpoint is failing (a nil memory never has one).
func (h *endpointHealth) empty() bool { return h == nil || h.n.Load() == 0 }

// failed records a connect failure of addr at now and returns how long it is
// passed over.
func (h *endpointHealth) failed(addr netip.Addr, reason string, now time.Time) time.Duration {
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.bad[addr]
	if st == nil {
		st = &endpointState{}
		h.bad[addr] = st
		h.n.Store(int32(len(h.bad)))
	}
	st.failures++
	backoff := h.max
	if st.failures <= 30 { // beyond, the shift overflows; the cap applies long before
		backoff = min(h.base<<(st.failures-1), h.max)
	}
	st.until = now.Add(backoff)
	st.reason = reason
	return backoff
}

// succeeded forgets addr: it connected.
func (h *endpointHealth) succeeded(addr netip.Addr) {
	if h.empty() {
		return
	}
	h.mu.Lock()
	if _, ok := h.bad[addr]; ok {
		delete(h.bad, addr)
		h.n.Store(int32(len(h.bad)))
	}
	h.mu.Unlock()
}

// view calls f with a function telling whether an address is healthy at now (no
// failure remembered, or its backoff over). f runs under the memory's lock, if any:
// it must not call back into h.
func (h *endpointHealth) view(now time.Time, f func(healthy func(netip.Addr) bool)) {
	if h.empty() {
		f(func(netip.Addr) bool { return true })
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	f(func(a netip.Addr) bool {
		st := h.bad[a]
		return st == nil || !now.Before(st.until)
	})
}

// prune forgets the endpoints that no service of snap has any more.
func (h *endpointHealth) prune(snap *discovery.Snapshot) {
	if h.empty() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	keep := make(map[netip.Addr]bool, len(h.bad))
	for _, s := range snap.Services {
		for _, ep := range s.Endpoints {
			if _, ok := h.bad[ep.Addr]; ok {
				keep[ep.Addr] = true
			}
		}
	}
	for a := range h.bad {
		if !keep[a] {
			delete(h.bad, a)
		}
	}
	h.n.Store(int32(len(h.bad)))
}

// EndpointHealth is one failing service endpoint in /config_dump.
type EndpointHealth struct {
	Address string `json:"address"`
	// Failures are its consecutive connect failures; Reason the last one's
	// (the reason label of ambit_endpoint_connect_failures_total).
	Failures int    `json:"failures"`
	Reason   string `json:"reason"`
	// Until is when it may be picked again; Healthy is true once that has passed
	// (it is tried again, and a failure then doubles its backoff).
	Until   time.Time `json:"unhealthyUntil"`
	Healthy bool      `json:"healthy"`
}

// dump lists the failing endpoints at now, by address.
func (h *endpointHealth) dump(now time.Time) []EndpointHealth {
	out := []EndpointHealth{}
	if h == nil {
		return out
	}
	h.mu.Lock()
	for a, st := range h.bad {
		out = append(out, EndpointHealth{Address: a.String(), Failures: st.failures, Reason: st.reason,
			Until: st.until, Healthy: !now.Before(st.until)})
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b EndpointHealth) int {
		return netip.MustParseAddr(a.Address).Compare(netip.MustParseAddr(b.Address))
	})
	return out
}

// healthLoop forgets failing endpoints that left the model, on each model change.
func (z *Ztunnel) healthLoop(ctx context.Context) error {
	return z.store.Follow(ctx, z.health.prune)
}
