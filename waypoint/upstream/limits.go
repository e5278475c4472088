package upstream

import (
	"fmt"
	"math"
	"sync/atomic"
)

// Limit names a circuit breaker.
type Limit int

// Circuit breakers (Envoy's thresholds, per cluster).
const (
	LimitConnections Limit = iota // tcp.maxConnections: upstream_cx_overflow
	LimitPending                  // http.http1MaxPendingRequests: upstream_rq_pending_overflow
	LimitRequests                 // http.http2MaxRequests
	LimitRetries                  // http.maxRetries or the retry budget: upstream_rq_retry_overflow
)

func (l Limit) String() string {
	switch l {
	case LimitConnections:
		return "max_connections"
	case LimitPending:
		return "max_pending_requests"
	case LimitRequests:
		return "max_requests"
	case LimitRetries:
		return "max_retries"
	}
	return "unknown"
}

// The overflow errors, one per limit; all match ErrOverflow.
var overflowErrs = [...]error{
	LimitConnections: fmt.Errorf("%w: %s reached", ErrOverflow, LimitConnections),
	LimitPending:     fmt.Errorf("%w: %s reached", ErrOverflow, LimitPending),
	LimitRequests:    fmt.Errorf("%w: %s reached", ErrOverflow, LimitRequests),
	LimitRetries:     fmt.Errorf("%w: %s reached", ErrOverflow, LimitRetries),
}

// breakers are the cluster's resource counters, lock-free.
type breakers struct {
	open     [4]atomic.Int64  // in use, per Limit
	overflow [4]atomic.Uint64 // refusals, per Limit
	retries  atomic.Uint64    // retries granted (upstream_rq_retry)
}

func (c *Cluster) max(l Limit) int64 {
	lim := &c.pol.Load().Limits
	switch l {
	case LimitConnections:
		return int64(lim.MaxConnections)
	case LimitPending:
		return int64(lim.MaxPendingRequests)
	case LimitRequests:
		return int64(lim.MaxRequests)
	}
	if rb := lim.RetryBudget; rb != nil {
		// Envoy: a share of the active and pending requests, at least the minimum.
		active := c.breakers.open[LimitRequests].Load() + c.breakers.open[LimitPending].Load()
		return max(int64(rb.MinConcurrency), int64(math.Floor(rb.Percent*float64(active)/100)))
	}
	return int64(lim.MaxRetries)
}

// acquire takes one unit of l, or counts an overflow. Adding first and
// backing out keeps the limit exact under contention (a racing caller may be
// refused spuriously, never admitted over the limit).
func (c *Cluster) acquire(l Limit) (func(), error) {
	n := &c.breakers.open[l]
	if n.Add(1) > c.max(l) {
		n.Add(-1)
		c.breakers.overflow[l].Add(1)
		c.emit(Event{Kind: EventOverflow, Cluster: c.name, Limit: l})
		return nil, overflowErrs[l]
	}
	var once atomic.Bool
	return func() {
		if !once.Swap(true) {
			n.Add(-1)
		}
	}, nil
}

// StartRequest admits one active request (MaxRequests); release ends it. The
// error matches ErrOverflow (response flag UO).
func (c *Cluster) StartRequest() (release func(), err error) { return c.acquire(LimitRequests) }

// StartPending admits one request waiting for a connection
// (MaxPendingRequests); release when it gets one or gives up.
func (c *Cluster) StartPending() (release func(), err error) { return c.acquire(LimitPending) }

// OpenConn admits one upstream connection (MaxConnections); release when it
// closes.
func (c *Cluster) OpenConn() (release func(), err error) { return c.acquire(LimitConnections) }

// TryRetry admits one concurrent retry (MaxRetries, or the retry budget);
// release when the retry ends. Without ok the retry must not be made: Envoy
// then answers with the response (or error) it has.
func (c *Cluster) TryRetry() (release func(), ok bool) {
	release, err := c.acquire(LimitRetries)
	if err != nil {
		return nil, false
	}
	c.breakers.retries.Add(1)
	return release, true
}
