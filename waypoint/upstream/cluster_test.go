package upstream

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUpdateKeepsState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pol := odPolicy(nil)
		pol.LB.Algorithm = RoundRobin
		c := newCluster(t, ClusterConfig{Policy: pol}, nil, endpoints(3)...)
		h0, h1, h2 := hostOf(t, c, addr(0)), hostOf(t, c, addr(1)), hostOf(t, c, addr(2))
		done0a, done0b := h0.Start(), h0.Start()
		results(h1, err503, 5)
		results(h2, err503, 3)

		eps := endpoints(4)
		eps[2].Weight = 3
		c.Update(nil, eps)
		if hostOf(t, c, addr(0)) != h0 || hostOf(t, c, addr(1)) != h1 || hostOf(t, c, addr(2)) != h2 {
			t.Fatal("a staying host was replaced")
		}
		if h0.Active() != 2 || len(ejectedAddrs(c)) != 1 || ejectedAddrs(c)[0] != addr(1).String() {
			t.Fatalf("state lost: active %d, ejected %v", h0.Active(), ejectedAddrs(c))
		}
		if h2.Endpoint().Weight != 3 {
			t.Errorf("weight not updated: %d", h2.Endpoint().Weight)
		}
		results(h2, err503, 2) // its count went on: 3 + 2
		if len(ejectedAddrs(c)) != 2 {
			t.Errorf("counter lost: ejected %v", ejectedAddrs(c))
		}
		// The new host takes load at once.
		if got := counts(t, c, 40, nil); got[addr(3)] == 0 {
			t.Errorf("the new host takes no load: %v", got)
		}

		// Removed hosts finish their requests without harm.
		c.Update(nil, endpoints(4)[2:])
		done0a(err503)
		done0b(ok200)
		done0b(ok200)
		results(h1, err503, 10)
		if h0.Active() != 0 {
			t.Errorf("removed host: active %d", h0.Active())
		}
		st := c.Snapshot()
		if len(st.Endpoints) != 2 || st.Outlier.EjectionsActive != 1 || len(ejectedAddrs(c)) != 1 {
			t.Errorf("after removal: %+v", st)
		}
		for range 50 {
			if h, err := c.Pick(PickRequest{}); err != nil || h == h0 || h == h1 {
				t.Fatalf("picked %v, %v", h, err)
			}
		}
		// An address that comes back is a new host, with fresh state.
		c.Update(nil, endpoints(4))
		if n := hostOf(t, c, addr(1)); n == h1 || len(ejectedAddrs(c)) != 1 {
			t.Errorf("re-added host kept the removed one's state: ejected %v", ejectedAddrs(c))
		}
	})
}

func TestPolicyUpdate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCluster(t, ClusterConfig{Policy: odPolicy(nil)}, nil, endpoints(3)...)
		results(hostOf(t, c, addr(0)), err503, 5)
		if len(ejectedAddrs(c)) != 1 {
			t.Fatal("not ejected")
		}
		rr := DefaultPolicy()
		rr.LB.Algorithm = RoundRobin
		c.Update(rr, endpoints(3))
		if c.Policy() != rr || len(ejectedAddrs(c)) != 0 || c.Snapshot().Outlier != nil {
			t.Error("without outlier detection, nothing stays ejected")
		}
		if got := counts(t, c, 30, nil); got[addr(0)] != 10 || got[addr(1)] != 10 {
			t.Errorf("round robin: %v", got)
		}
		c.Close()
		c.Close()
		if _, err := c.Pick(PickRequest{}); err != nil {
			t.Errorf("pick after Close: %v", err)
		}
	})
}

func TestDuplicateAndInvalidEndpoints(t *testing.T) {
	eps := append(endpoints(2), endpoints(1)[0], Endpoint{})
	c := newCluster(t, ClusterConfig{}, nil, eps...)
	if n := len(c.Snapshot().Endpoints); n != 2 {
		t.Errorf("%d endpoints, want 2", n)
	}
	if w := c.Snapshot().Endpoints[0].Weight; w != 1 {
		t.Errorf("weight %d, want 1", w)
	}
}

// TestConcurrentUse is for the race detector: picks, results and breakers
// while endpoints and policies change.
func TestConcurrentUse(t *testing.T) {
	pol := odPolicy(nil)
	c := NewCluster(ClusterConfig{Policy: pol}, nil)
	defer c.Close()
	c.Update(nil, endpoints(10))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 1))
			var tried []*Host
			for i := range 2000 {
				release, err := c.StartRequest()
				if err != nil {
					t.Error(err)
					return
				}
				h, err := c.Pick(PickRequest{Exclude: tried})
				if err != nil {
					release()
					tried = nil
					continue
				}
				done := h.Start()
				r := ok200
				if rnd.IntN(3) == 0 {
					r = err503
				}
				done(r)
				release()
				if i%3 == 0 {
					tried = append(tried[:0], h)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			p := pol
			if i%2 == 0 {
				p = lbPolicy(Algorithm(i / 2 % 5))
			}
			c.Update(p, endpoints(5+i%6))
			_ = c.Snapshot()
		}
	})
	wg.Wait()
	if n := c.Snapshot().Breakers.Requests; n != 0 {
		t.Errorf("%d requests still counted", n)
	}
}

func BenchmarkPick(b *testing.B) {
	for _, alg := range []Algorithm{LeastRequest, RoundRobin, Random, RingHash, Maglev} {
		for _, n := range []int{3, 100} {
			b.Run(fmt.Sprintf("%v/%d", alg, n), func(b *testing.B) {
				c := NewCluster(ClusterConfig{Policy: lbPolicy(alg)}, nil)
				defer c.Close()
				c.Update(nil, endpoints(n))
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					var key uint64
					for pb.Next() {
						key += 0x9e3779b97f4a7c15
						h, err := c.Pick(PickRequest{Hash: key, HasHash: true})
						if err != nil {
							b.Fatal(err)
						}
						h.Start()(ok200)
					}
				})
			})
		}
	}
}

func BenchmarkPickOnly(b *testing.B) {
	c := NewCluster(ClusterConfig{Policy: odPolicy(nil)}, nil)
	defer c.Close()
	c.Update(nil, endpoints(100))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Pick(PickRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
