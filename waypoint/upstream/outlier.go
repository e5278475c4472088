package upstream

import (
	"slices"
	"time"
)

// outlierStats are Envoy's outlier_detection.* counters; guarded by c.mu.
type outlierStats struct {
	enforced uint64    // ejections_enforced_total
	overflow uint64    // ejections_overflow: refused by max ejection percent
	byReason [3]uint64 // ejections_enforced_consecutive_*
}

// finish ends a request: Envoy's DetectorHostMonitorImpl.putResult. The
// consecutive counters are atomics; reaching a threshold (exactly, as Envoy)
// ejects inline, under the cluster's lock.
func (h *Host) finish(r Result) {
	h.active.Add(-1)
	h.requests.Add(1)
	od := h.c.pol.Load().Outlier
	if od == nil {
		return
	}
	if od.SplitExternalLocalOriginErrors {
		if r.Local != LocalNone {
			h.failures.Add(1)
			if h.consLocal.Add(1) == od.ConsecutiveLocalOriginFailures {
				h.c.consecutiveError(h, EjectConsecutiveLocalOriginFailure)
			}
			return
		}
		// The connection worked; an HTTP status is judged on its own.
		h.consLocal.Store(0)
		if r.Status != 0 {
			h.putStatus(od.status(r.Status), od)
		}
		return
	}
	switch r.Local {
	case ConnectFailed, Reset:
		h.putStatus(503, od)
	case Timeout:
		h.putStatus(504, od)
	default:
		if r.Status == 0 {
			h.putStatus(200, od)
		} else {
			h.putStatus(od.status(r.Status), od)
		}
	}
}

// status applies ErrorCodes: a listed status counts as a 500, others as a 200.
func (od *Outlier) status(code int) int {
	if len(od.ErrorCodes) == 0 {
		return code
	}
	if _, ok := slices.BinarySearch(od.ErrorCodes, code); ok {
		return 500
	}
	return 200
}

// putStatus is Envoy's putHttpResponseCode.
func (h *Host) putStatus(code int, od *Outlier) {
	if code < 500 || code > 599 {
		h.cons5xx.Store(0)
		h.consGw.Store(0)
		return
	}
	h.failures.Add(1)
	if code == 502 || code == 503 || code == 504 {
		if h.consGw.Add(1) == od.ConsecutiveGatewayErrors {
			h.c.consecutiveError(h, EjectConsecutiveGatewayFailure)
		}
	} else {
		h.consGw.Store(0)
	}
	if h.cons5xx.Add(1) == od.Consecutive5xx {
		h.c.consecutiveError(h, EjectConsecutive5xx)
	}
}

// consecutiveError is Envoy's onConsecutiveErrorWorker and ejectHost: the
// host is ejected unless it already is, or the ejected share of all hosts
// would exceed MaxEjectionPercent (the first ejection passes with
// AlwaysEjectOneHost); the counter that fired starts again either way.
func (c *Cluster) consecutiveError(h *Host, why EjectReason) {
	c.mu.Lock()
	od := c.pol.Load().Outlier
	if od == nil || !h.member || h.ejected || c.closed {
		c.mu.Unlock()
		return
	}
	switch why {
	case EjectConsecutive5xx:
		h.cons5xx.Store(0)
	case EjectConsecutiveGatewayFailure:
		h.consGw.Store(0)
	case EjectConsecutiveLocalOriginFailure:
		h.consLocal.Store(0)
	}
	allowed := uint64(100*(c.ejected+1)) <= uint64(od.MaxEjectionPercent)*uint64(len(c.order)) ||
		od.AlwaysEjectOneHost && c.ejected == 0
	if !allowed {
		c.stats.overflow++
		c.mu.Unlock()
		return
	}
	now := time.Now()
	h.ejected, h.ejectedAt = true, now
	h.timesEjected++
	if time.Duration(h.backoff)*od.BaseEjectionTime < od.MaxEjectionTime+od.BaseEjectionTime {
		h.backoff++
	}
	c.ejected++
	c.stats.enforced++
	c.stats.byReason[why]++
	c.rebuildLocked()
	ev := Event{Kind: EventEjected, Cluster: c.name, Addr: h.addr, Reason: why, Until: now.Add(ejectionTime(h, od))}
	c.mu.Unlock()
	c.emit(ev)
}

// ejectionTime is base times the host's multiplier, capped.
func ejectionTime(h *Host, od *Outlier) time.Duration {
	return min(time.Duration(h.backoff)*od.BaseEjectionTime, od.MaxEjectionTime)
}

// onInterval is Envoy's interval sweep: hosts whose ejection time has passed
// return (their counters reset), and hosts healthy for an interval since they
// last returned lose one step of their ejection multiplier.
func (c *Cluster) onInterval() {
	c.mu.Lock()
	od := c.pol.Load().Outlier
	if c.closed || od == nil {
		c.mu.Unlock()
		return
	}
	now := time.Now()
	var evs []Event
	for _, h := range c.order {
		if h.ejected && now.Sub(h.ejectedAt) >= ejectionTime(h, od) {
			h.ejected = false
			h.lastReturn = now
			h.cons5xx.Store(0)
			h.consGw.Store(0)
			h.consLocal.Store(0)
			c.ejected--
			evs = append(evs, Event{Kind: EventReturned, Cluster: c.name, Addr: h.addr})
		}
	}
	for _, h := range c.order {
		if !h.ejected && !h.lastReturn.IsZero() && now.Sub(h.lastReturn) >= od.Interval && h.backoff > 0 {
			h.backoff--
		}
	}
	if len(evs) > 0 {
		c.rebuildLocked()
	}
	c.timer.Reset(od.Interval)
	c.mu.Unlock()
	for _, ev := range evs {
		c.emit(ev)
	}
}

func (c *Cluster) emit(ev Event) {
	if c.obs != nil {
		c.obs.ClusterEvent(ev)
	}
}
