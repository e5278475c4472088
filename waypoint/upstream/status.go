package upstream

import "time"

// ClusterStatus is a Cluster's state for /config_dump and metrics. Counter
// names follow Envoy's cluster statistics.
type ClusterStatus struct {
	Name      string           `json:"name"`
	Rule      string           `json:"destinationRule,omitempty"`
	Algorithm string           `json:"lbPolicy"`
	Endpoints []EndpointStatus `json:"endpoints"`
	// Priorities are the locality priorities, P0 first.
	Priorities []PriorityStatus `json:"priorities"`
	Breakers   BreakerStatus    `json:"circuitBreakers"`
	Outlier    *OutlierStatus   `json:"outlierDetection,omitempty"`
}

// EndpointStatus is one host.
type EndpointStatus struct {
	Addr     string `json:"address"`
	ID       string `json:"workload,omitempty"`
	Locality string `json:"locality,omitempty"`
	Weight   uint32 `json:"weight"`
	// Priority is -1 for an endpoint a locality distribution sends nothing to.
	Priority int    `json:"priority"`
	Active   int64  `json:"rqActive"`
	Requests uint64 `json:"rqTotal"`
	// Failures are the results the outlier detector counted as errors.
	Failures uint64 `json:"rqError"`
	// Health is "healthy" or "ejected".
	Health       string    `json:"health"`
	EjectedUntil time.Time `json:"ejectedUntil,omitzero"`
	TimesEjected uint32    `json:"timesEjected,omitempty"`
	// Multiplier is the ejection time multiplier (decays while healthy).
	Multiplier                     uint32 `json:"ejectionMultiplier,omitempty"`
	Consecutive5xx                 uint32 `json:"consecutive5xx,omitempty"`
	ConsecutiveGatewayErrors       uint32 `json:"consecutiveGatewayErrors,omitempty"`
	ConsecutiveLocalOriginFailures uint32 `json:"consecutiveLocalOriginFailures,omitempty"`
}

// PriorityStatus is one priority level.
type PriorityStatus struct {
	Hosts   int    `json:"hosts"`
	Healthy int    `json:"healthy"`
	Load    uint32 `json:"loadPercent"`
	Panic   bool   `json:"panic,omitempty"`
}

// BreakerStatus is the circuit breakers' use and refusals.
type BreakerStatus struct {
	Connections int64 `json:"cxActive"`
	Pending     int64 `json:"rqPendingActive"`
	Requests    int64 `json:"rqActive"`
	Retries     int64 `json:"rqRetryActive"`
	// Overflows per limit: upstream_cx_overflow, upstream_rq_pending_overflow,
	// the max requests breaker (Envoy counts it in upstream_rq_pending_overflow)
	// and upstream_rq_retry_overflow.
	ConnectionOverflows uint64 `json:"cxOverflow"`
	PendingOverflows    uint64 `json:"rqPendingOverflow"`
	RequestOverflows    uint64 `json:"rqOverflow"`
	RetryOverflows      uint64 `json:"rqRetryOverflow"`
	// RetriesTotal is upstream_rq_retry: retries admitted.
	RetriesTotal uint64 `json:"rqRetry"`
}

// OutlierStatus is the detector's outlier_detection.* statistics.
type OutlierStatus struct {
	EjectionsActive   int    `json:"ejectionsActive"`
	EjectionsEnforced uint64 `json:"ejectionsEnforcedTotal"`
	// EjectionsOverflow are ejections refused by maxEjectionPercent.
	EjectionsOverflow  uint64 `json:"ejectionsOverflow"`
	Consecutive5xx     uint64 `json:"ejectionsEnforcedConsecutive5xx"`
	ConsecutiveGateway uint64 `json:"ejectionsEnforcedConsecutiveGatewayFailure"`
	ConsecutiveLocal   uint64 `json:"ejectionsEnforcedConsecutiveLocalOriginFailure"`
}

// Snapshot returns the cluster's current state.
func (c *Cluster) Snapshot() ClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	pol := c.pol.Load()
	st := c.state.Load()
	s := ClusterStatus{Name: c.name, Rule: pol.Rule, Algorithm: pol.LB.Algorithm.String(),
		Endpoints: make([]EndpointStatus, 0, len(c.order))}
	for _, h := range c.order {
		ep := h.ep.Load()
		e := EndpointStatus{
			Addr: h.key, ID: ep.ID, Locality: ep.Locality.String(), Weight: ep.Weight, Priority: h.priority,
			Active: h.active.Load(), Requests: h.requests.Load(), Failures: h.failures.Load(),
			Health: "healthy", TimesEjected: h.timesEjected, Multiplier: h.backoff,
			Consecutive5xx: h.cons5xx.Load(), ConsecutiveGatewayErrors: h.consGw.Load(),
			ConsecutiveLocalOriginFailures: h.consLocal.Load(),
		}
		if h.ejected {
			e.Health = "ejected"
			if pol.Outlier != nil {
				e.EjectedUntil = h.ejectedAt.Add(ejectionTime(h, pol.Outlier))
			}
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	prev := uint32(0)
	for i, ps := range st.prios {
		if len(ps.hosts) == 0 {
			continue
		}
		s.Priorities = append(s.Priorities, PriorityStatus{Hosts: len(ps.hosts), Healthy: ps.healthy,
			Load: st.cumLoad[i] - prev, Panic: ps.panic})
		prev = st.cumLoad[i]
	}
	b := &c.breakers
	s.Breakers = BreakerStatus{
		Connections: b.open[LimitConnections].Load(), Pending: b.open[LimitPending].Load(),
		Requests: b.open[LimitRequests].Load(), Retries: b.open[LimitRetries].Load(),
		ConnectionOverflows: b.overflow[LimitConnections].Load(), PendingOverflows: b.overflow[LimitPending].Load(),
		RequestOverflows: b.overflow[LimitRequests].Load(), RetryOverflows: b.overflow[LimitRetries].Load(),
		RetriesTotal: b.retries.Load(),
	}
	if pol.Outlier != nil {
		s.Outlier = &OutlierStatus{EjectionsActive: c.ejected, EjectionsEnforced: c.stats.enforced,
			EjectionsOverflow:  c.stats.overflow,
			Consecutive5xx:     c.stats.byReason[EjectConsecutive5xx],
			ConsecutiveGateway: c.stats.byReason[EjectConsecutiveGatewayFailure],
			ConsecutiveLocal:   c.stats.byReason[EjectConsecutiveLocalOriginFailure]}
	}
	return s
}
