package upstream

import (
	"errors"
	"testing"
)

func TestCircuitBreakers(t *testing.T) {
	tests := []struct {
		limit   Limit
		set     func(l *Limits)
		acquire func(c *Cluster) (func(), error)
		open    func(b BreakerStatus) int64
		refused func(b BreakerStatus) uint64
	}{
		{LimitRequests, func(l *Limits) { l.MaxRequests = 2 }, (*Cluster).StartRequest,
			func(b BreakerStatus) int64 { return b.Requests }, func(b BreakerStatus) uint64 { return b.RequestOverflows }},
		{LimitPending, func(l *Limits) { l.MaxPendingRequests = 2 }, (*Cluster).StartPending,
			func(b BreakerStatus) int64 { return b.Pending }, func(b BreakerStatus) uint64 { return b.PendingOverflows }},
		{LimitConnections, func(l *Limits) { l.MaxConnections = 2 }, (*Cluster).OpenConn,
			func(b BreakerStatus) int64 { return b.Connections }, func(b BreakerStatus) uint64 { return b.ConnectionOverflows }},
		{LimitRetries, func(l *Limits) { l.MaxRetries = 2 }, func(c *Cluster) (func(), error) {
			release, ok := c.TryRetry()
			if !ok {
				return nil, ErrOverflow
			}
			return release, nil
		}, func(b BreakerStatus) int64 { return b.Retries }, func(b BreakerStatus) uint64 { return b.RetryOverflows }},
	}
	for _, tt := range tests {
		t.Run(tt.limit.String(), func(t *testing.T) {
			pol := DefaultPolicy()
			tt.set(&pol.Limits)
			rec := &recorder{}
			c := newCluster(t, ClusterConfig{Name: "c", Policy: pol}, rec, endpoints(1)...)
			r1, err1 := tt.acquire(c)
			r2, err2 := tt.acquire(c)
			if err1 != nil || err2 != nil {
				t.Fatalf("under the limit: %v, %v", err1, err2)
			}
			_, err := tt.acquire(c)
			if !errors.Is(err, ErrOverflow) || ResponseFlag(err) != "UO" {
				t.Fatalf("at the limit: %v, want ErrOverflow", err)
			}
			st := c.Snapshot().Breakers
			if tt.open(st) != 2 || tt.refused(st) != 1 {
				t.Errorf("status %+v", st)
			}
			if ev := rec.kinds(EventOverflow); len(ev) != 1 || ev[0].Limit != tt.limit || ev[0].Cluster != "c" {
				t.Errorf("events %+v", rec.events)
			}
			// Releasing restores capacity, once per release.
			r1()
			r1()
			r3, err := tt.acquire(c)
			if err != nil {
				t.Fatalf("after a release: %v", err)
			}
			if _, err := tt.acquire(c); err == nil {
				t.Fatal("a double release freed two units")
			}
			r2()
			r3()
			if got := tt.open(c.Snapshot().Breakers); got != 0 {
				t.Errorf("%d still open", got)
			}
		})
	}
}

func TestDefaultLimitsAreUnlimited(t *testing.T) {
	c := newCluster(t, ClusterConfig{}, nil, endpoints(1)...)
	for i := range 10000 {
		if _, err := c.StartRequest(); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
}

func TestRetryBudget(t *testing.T) {
	pol := DefaultPolicy()
	pol.Limits.MaxRetries = 1 // the budget replaces it
	pol.Limits.RetryBudget = &RetryBudget{Percent: 50, MinConcurrency: 1}
	c := newCluster(t, ClusterConfig{Policy: pol}, nil, endpoints(1)...)
	try := func() bool { _, ok := c.TryRetry(); return ok }
	if !try() || try() {
		t.Fatal("with no active requests the minimum (1) applies")
	}
	for range 6 {
		if _, err := c.StartRequest(); err != nil {
			t.Fatal(err)
		}
	}
	// 50% of 6 active requests: 3 concurrent retries, one of them in use.
	if !try() || !try() || try() {
		t.Errorf("status %+v", c.Snapshot().Breakers)
	}
	if got := c.Snapshot().Breakers.RetriesTotal; got != 3 {
		t.Errorf("retries admitted %d, want 3", got)
	}
}
