package upstream

import (
	"math"
	"testing"
	"testing/synctest"
	"time"
)

// odPolicy is the default policy with outlier detection, ejecting up to all
// hosts unless mod says otherwise.
func odPolicy(mod func(o *Outlier)) *Policy {
	p := DefaultPolicy()
	p.Outlier = DefaultOutlier()
	p.Outlier.MaxEjectionPercent = 100
	if mod != nil {
		mod(p.Outlier)
	}
	return p
}

var (
	ok200    = Result{Status: 200}
	err500   = Result{Status: 500}
	err502   = Result{Status: 502}
	err503   = Result{Status: 503}
	err504   = Result{Status: 504}
	connFail = Result{Local: ConnectFailed}
	timeout  = Result{Local: Timeout}
)

func repeat(r Result, n int) []Result {
	out := make([]Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

func seq(parts ...[]Result) []Result {
	var out []Result
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestConsecutiveErrors(t *testing.T) {
	gateway := func(o *Outlier) { o.Consecutive5xx, o.ConsecutiveGatewayErrors = 0, 3 }
	split := func(o *Outlier) { o.SplitExternalLocalOriginErrors, o.ConsecutiveLocalOriginFailures = true, 2 }
	tests := []struct {
		name    string
		mod     func(o *Outlier)
		results []Result
		reason  EjectReason
		ejected bool
	}{
		{"five 503", nil, repeat(err503, 5), EjectConsecutive5xx, true},
		{"five 500", nil, repeat(err500, 5), EjectConsecutive5xx, true},
		{"four 5xx", nil, repeat(err500, 4), 0, false},
		{"a success resets", nil, seq(repeat(err500, 4), []Result{ok200}, repeat(err500, 4)), 0, false},
		{"a 404 resets", nil, seq(repeat(err500, 4), []Result{{Status: 404}}, repeat(err500, 4)), 0, false},
		{"a TCP success resets", nil, seq(repeat(err500, 4), []Result{{}}, repeat(err500, 4)), 0, false},
		{"connect failures count as 5xx", nil, repeat(connFail, 5), EjectConsecutive5xx, true},
		{"timeouts count as 5xx", nil, seq(repeat(timeout, 3), repeat(err500, 2)), EjectConsecutive5xx, true},
		{"5xx off", func(o *Outlier) { o.Consecutive5xx = 0 }, repeat(err500, 20), 0, false},
		{"threshold 1", func(o *Outlier) { o.Consecutive5xx = 1 }, []Result{err500}, EjectConsecutive5xx, true},
		{"error codes: listed", func(o *Outlier) { o.ErrorCodes = []int{429} }, repeat(Result{Status: 429}, 5), EjectConsecutive5xx, true},
		{"error codes: others succeed", func(o *Outlier) { o.ErrorCodes = []int{429} }, repeat(err503, 20), 0, false},
		{"gateway errors", gateway, []Result{err502, err503, err504}, EjectConsecutiveGatewayFailure, true},
		{"a 500 resets gateway errors", gateway, []Result{err502, err503, err500, err504, err503}, 0, false},
		{"local origin is a gateway error unsplit", gateway, []Result{connFail, timeout, err503}, EjectConsecutiveGatewayFailure, true},
		{"gateway errors off by default", func(o *Outlier) { o.Consecutive5xx = 0 }, repeat(err503, 20), 0, false},
		{"split: local origin failures", split, repeat(connFail, 2), EjectConsecutiveLocalOriginFailure, true},
		{"split: a response resets them", split, []Result{connFail, err503, connFail}, 0, false},
		{"split: they are not 5xx", func(o *Outlier) { split(o); o.ConsecutiveLocalOriginFailures = 50 }, repeat(connFail, 20), 0, false},
		{"split: 5xx still count", split, seq([]Result{connFail}, repeat(err503, 5)), EjectConsecutive5xx, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := &recorder{}
				c := newCluster(t, ClusterConfig{Name: "c", Policy: odPolicy(tt.mod)}, rec, endpoints(2)...)
				h := hostOf(t, c, addr(0))
				for _, r := range tt.results {
					h.Start()(r)
				}
				ev := rec.kinds(EventEjected)
				if got := len(ev) > 0; got != tt.ejected {
					t.Fatalf("ejected %v, want %v (events %+v)", got, tt.ejected, rec.events)
				}
				if tt.ejected {
					if ev[0].Addr != addr(0) || ev[0].Reason != tt.reason || ev[0].Cluster != "c" {
						t.Errorf("event %+v, want %v for %v", ev[0], tt.reason, addr(0))
					}
					// An ejected host gets no traffic.
					for range 100 {
						if p, _ := c.Pick(PickRequest{}); p == h {
							t.Fatal("picked the ejected host")
						}
					}
				}
			})
		})
	}
}

func TestEjectionTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		pol := odPolicy(func(o *Outlier) { o.BaseEjectionTime, o.Interval = 100*time.Second, 10*time.Second })
		c := newCluster(t, ClusterConfig{Policy: pol}, rec, endpoints(2)...)
		h := hostOf(t, c, addr(0))
		// Ejected again as soon as it returns: base x times ejected, capped
		// at 300 s (Envoy's default, as base is smaller).
		for i, want := range []time.Duration{100 * time.Second, 200 * time.Second, 300 * time.Second, 300 * time.Second} {
			start := time.Now()
			results(h, err503, 5)
			ev := rec.kinds(EventEjected)
			if len(ev) != i+1 {
				t.Fatalf("ejection %d: %d ejections", i+1, len(ev))
			}
			if got := ev[i].Until.Sub(start); got != want {
				t.Errorf("ejection %d: for %v, want %v", i+1, got, want)
			}
			// It returns at the first interval sweep after that time.
			time.Sleep(want - time.Nanosecond)
			synctest.Wait()
			if len(ejectedAddrs(c)) != 1 {
				t.Fatalf("ejection %d: returned before %v", i+1, want)
			}
			time.Sleep(time.Nanosecond)
			synctest.Wait()
			if len(ejectedAddrs(c)) != 0 || len(rec.kinds(EventReturned)) != i+1 {
				t.Fatalf("ejection %d: not returned after %v", i+1, want)
			}
		}
		// Healthy, the multiplier decays by one per interval after an interval.
		mult := func() uint32 { return c.Snapshot().Endpoints[0].Multiplier }
		if got := mult(); got != 4 {
			t.Fatalf("multiplier %d after four ejections, want 4", got)
		}
		for _, want := range []uint32{3, 2, 1} {
			time.Sleep(10 * time.Second)
			synctest.Wait()
			if got := mult(); got != want {
				t.Fatalf("multiplier %d, want %d", got, want)
			}
		}
		start := time.Now()
		results(h, err503, 5)
		ev := rec.kinds(EventEjected)
		if got := ev[len(ev)-1].Until.Sub(start); got != 200*time.Second {
			t.Errorf("after decay: ejected for %v, want 200s", got)
		}
	})
}

func TestReturnAtIntervalTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		c := newCluster(t, ClusterConfig{Policy: odPolicy(nil)}, rec, endpoints(3)...)
		time.Sleep(time.Second)
		results(hostOf(t, c, addr(1)), err500, 5)
		// Ejected at 1 s for 30 s; sweeps run at 10, 20, 30, 40 s.
		time.Sleep(38 * time.Second)
		synctest.Wait()
		if got := ejectedAddrs(c); len(got) != 1 || got[0] != addr(1).String() {
			t.Fatalf("at 39s: ejected %v", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := ejectedAddrs(c); len(got) != 0 {
			t.Fatalf("at 40s: ejected %v", got)
		}
		ret := rec.kinds(EventReturned)
		if len(ret) != 1 || ret[0].Addr != addr(1) {
			t.Errorf("returned events %+v", ret)
		}
		// Back in service, with fresh counters.
		st := c.Snapshot()
		if e := st.Endpoints[1]; e.Consecutive5xx != 0 || e.TimesEjected != 1 || st.Outlier.EjectionsActive != 0 {
			t.Errorf("status %+v", st)
		}
		got := counts(t, c, 300, nil)
		if got[addr(1)] == 0 {
			t.Error("the returned host takes no traffic")
		}
	})
}

func TestMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		name        string
		hosts       int
		percent     uint32
		alwaysOne   bool
		wantEjected int
	}{
		{"half of four", 4, 50, false, 2},
		{"all of three", 3, 100, false, 3},
		// Envoy (since 1.27) checks the share after the ejection: 1 of 5 is
		// 20% > 10%, so nothing is ejected; Istio's default cannot eject from
		// fewer than 10 hosts.
		{"10% of five", 5, 10, false, 0},
		{"10% of ten", 10, 10, false, 1},
		{"always eject one", 5, 10, true, 1},
		{"always eject one, no more", 5, 20, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pol := odPolicy(func(o *Outlier) { o.MaxEjectionPercent, o.AlwaysEjectOneHost = tt.percent, tt.alwaysOne })
				c := newCluster(t, ClusterConfig{Policy: pol}, nil, endpoints(tt.hosts)...)
				for i := range tt.hosts {
					results(hostOf(t, c, addr(i)), err503, 5)
				}
				st := c.Snapshot()
				if len(ejectedAddrs(c)) != tt.wantEjected || st.Outlier.EjectionsActive != tt.wantEjected {
					t.Errorf("ejected %v, want %d", ejectedAddrs(c), tt.wantEjected)
				}
				if want := uint64(tt.hosts - tt.wantEjected); st.Outlier.EjectionsOverflow != want {
					t.Errorf("overflow %d, want %d", st.Outlier.EjectionsOverflow, want)
				}
			})
		})
	}
}

func TestPanicThreshold(t *testing.T) {
	tests := []struct {
		name      string
		threshold uint32
		eject     int // of 4 hosts
		// wantShare of picks for each of the 4 hosts (host i ejected when i < eject)
		wantShare []float64
		wantErr   error
	}{
		{"panic uses all hosts", 50, 3, []float64{.25, .25, .25, .25}, nil},
		{"no panic at 0%", 0, 3, []float64{0, 0, 0, 1}, nil},
		{"all ejected without panic", 0, 4, nil, ErrNoHealthyUpstream},
		{"all ejected in panic", 1, 4, []float64{.25, .25, .25, .25}, nil},
		// 3 of 4 healthy is 75% < 80%, but 75% x 1.4 covers the load: no panic.
		{"overprovisioned", 80, 1, []float64{0, 1. / 3, 1. / 3, 1. / 3}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pol := odPolicy(func(o *Outlier) { o.MinHealthPercent = tt.threshold })
				pol.LB.Algorithm = Random
				c := newCluster(t, ClusterConfig{Policy: pol}, nil, endpoints(4)...)
				for i := range tt.eject {
					results(hostOf(t, c, addr(i)), err503, 5)
				}
				if tt.wantErr != nil {
					if _, err := c.Pick(PickRequest{}); err != tt.wantErr {
						t.Fatalf("err %v, want %v", err, tt.wantErr)
					}
					return
				}
				got := counts(t, c, 10000, nil)
				for i, w := range tt.wantShare {
					if share := float64(got[addr(i)]) / 10000; math.Abs(share-w) > .03 {
						t.Errorf("host %d: share %.3f, want %.3f", i, share, w)
					}
				}
			})
		})
	}
}
