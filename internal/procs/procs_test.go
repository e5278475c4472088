package procs

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeSched is a runtime whose CPU use follows load (cores as a function of the time
// since start); it must be created inside the synctest bubble.
type fakeSched struct {
	mu    sync.Mutex
	cur   int
	def   int // what setDefault applies
	start time.Time
	load  func(since time.Duration) float64
	queue func(since time.Duration) float64 // runnable goroutines; nil: none
	reads int                               // runnable() calls
	cpu   time.Duration
	at    time.Time
	err   error
}

func newFakeSched(def int, load func(time.Duration) float64) *fakeSched {
	now := time.Now()
	return &fakeSched{cur: def, def: def, start: now, at: now, load: load}
}

func (f *fakeSched) procs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

func (f *fakeSched) setOne() {
	f.mu.Lock()
	f.cur = 1
	f.mu.Unlock()
}

func (f *fakeSched) setDefault() {
	f.mu.Lock()
	f.cur = f.def
	f.mu.Unlock()
}

func (f *fakeSched) runnable() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.queue == nil {
		return 0
	}
	return int(f.queue(time.Since(f.start)))
}

func (f *fakeSched) cpuTime() (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	now := time.Now()
	// The load over the elapsed stretch, sampled at its middle.
	mid := f.at.Add(now.Sub(f.at) / 2).Sub(f.start)
	f.cpu += time.Duration(f.load(mid) * float64(now.Sub(f.at)))
	f.at = now
	return f.cpu, nil
}

// steps is a load given as (until, cores) pieces.
func steps(pieces ...any) func(time.Duration) float64 {
	return func(since time.Duration) float64 {
		for i := 0; i+1 < len(pieces); i += 2 {
			if since < pieces[i].(time.Duration) {
				return pieces[i+1].(float64)
			}
		}
		return pieces[len(pieces)-1].(float64)
	}
}

const forever = time.Hour

func TestScalerFollowsLoad(t *testing.T) {
	type check struct {
		at    time.Duration // since start
		procs int
	}
	tests := []struct {
		name    string
		def     int
		load    func(time.Duration) float64
		queue   func(time.Duration) float64
		checks  []check
		changes float64
	}{
		{
			name:    "light load stays on one P",
			def:     4,
			load:    steps(forever, 0.6),
			checks:  []check{{50 * time.Millisecond, 1}, {5 * time.Second, 1}},
			changes: 0,
		},
		{
			name:    "just below Up stays on one P",
			def:     2,
			load:    steps(forever, 0.89),
			checks:  []check{{5 * time.Second, 1}},
			changes: 0,
		},
		{
			name: "a full P gets the default after UpAfter",
			def:  4,
			load: steps(time.Second, 0.2, forever, 1.0),
			checks: []check{
				{1250 * time.Millisecond, 1},
				{1350 * time.Millisecond, 4},
				{10 * time.Second, 4},
			},
			changes: 1,
		},
		{
			name:    "a busy P without a queue stays on one P",
			def:     4,
			load:    steps(forever, 0.85),
			queue:   steps(forever, 1.0), // one goroutine waits now and then
			checks:  []check{{5 * time.Second, 1}},
			changes: 0,
		},
		{
			name:  "a queue for the P gets the default below Up",
			def:   2,
			load:  steps(time.Second, 0.2, forever, 0.6),
			queue: steps(time.Second, 0.0, forever, 3.0),
			// The first busy interval only starts the sampling: UpAfter counts from 1.1 s.
			checks: []check{
				{1350 * time.Millisecond, 1},
				{1450 * time.Millisecond, 2},
			},
			changes: 1,
		},
		{
			name:  "a queue keeps more Ps while CPU use is low",
			def:   2,
			load:  steps(time.Second, 1.5, forever, 0.5),
			queue: steps(5*time.Second, 2.0, forever, 0.0),
			checks: []check{
				{4900 * time.Millisecond, 2},
				{6950 * time.Millisecond, 2},
				{7050 * time.Millisecond, 1},
			},
			changes: 2,
		},
		{
			name:    "a short spike stays on one P",
			def:     4,
			load:    steps(time.Second, 0.2, 1200*time.Millisecond, 1.0, forever, 0.5),
			checks:  []check{{5 * time.Second, 1}},
			changes: 0,
		},
		{
			name: "back to one P after DownAfter below Down",
			def:  2,
			load: steps(time.Second, 1.5, forever, 0.3),
			checks: []check{
				{500 * time.Millisecond, 2},
				{2950 * time.Millisecond, 2}, // below Down for 1.95 s
				{3050 * time.Millisecond, 1},
				{10 * time.Second, 1},
			},
			changes: 2,
		},
		{
			name: "use between Down and Up restarts the countdown",
			def:  2,
			// 1.5 s below Down, 0.2 s between Down and Up, then below Down again.
			load: steps(time.Second, 1.5, 2500*time.Millisecond, 0.3, 2700*time.Millisecond, 0.8, forever, 0.3),
			checks: []check{
				{4500 * time.Millisecond, 2}, // would be 1 without the restart
				{5000 * time.Millisecond, 1},
			},
			changes: 2,
		},
		{
			name: "an oscillating load changes at most once per DownAfter",
			def:  2,
			// Busy 400 ms out of every 1.5 s, idle otherwise.
			load: func(since time.Duration) float64 {
				if since%(1500*time.Millisecond) < 400*time.Millisecond {
					return 1.2
				}
				return 0.1
			},
			checks:  []check{{10 * time.Second, 2}},
			changes: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rt := newFakeSched(tt.def, tt.load)
				rt.queue = tt.queue
				reg := prometheus.NewRegistry()
				s := newScaler(Config{}, nil, reg, rt)
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan error, 1)
				go func() { done <- s.Run(ctx) }()
				start := time.Now()
				for _, c := range tt.checks {
					time.Sleep(time.Until(start.Add(c.at)))
					synctest.Wait()
					if got := rt.procs(); got != c.procs {
						t.Errorf("at %v: %d procs, want %d", c.at, got, c.procs)
					}
				}
				cancel()
				if err := <-done; err != nil {
					t.Fatalf("Run: %v", err)
				}
				if got := changes(t, reg); got != tt.changes {
					t.Errorf("ambit_gomaxprocs_changes_total %v, want %v", got, tt.changes)
				}
			})
		})
	}
}

// changes reads ambit_gomaxprocs_changes_total from reg.
func changes(tb testing.TB, reg *prometheus.Registry) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ambit_gomaxprocs_changes_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	tb.Fatal("no ambit_gomaxprocs_changes_total")
	return 0
}

// TestScalerSamplesOnlyWhenBusy: an idle process is looked at once per interval, a busy
// one has its run queue sampled every Sample.
func TestScalerSamplesOnlyWhenBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeSched(2, steps(10*time.Second, 0.4, forever, 0.6))
		s := newScaler(Config{}, nil, nil, rt)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		rt.mu.Lock()
		idle := rt.reads
		rt.mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		rt.mu.Lock()
		busy := rt.reads - idle
		rt.mu.Unlock()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if idle != 0 {
			t.Errorf("%d run-queue samples in 10 s idle, want 0", idle)
		}
		if busy < 75 || busy > 100 {
			t.Errorf("%d run-queue samples in 1 s busy, want about 100 (one per 10 ms)", busy)
		}
	})
}

func TestScalerSingleProcDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeSched(1, steps(forever, 1.0))
		s := newScaler(Config{}, nil, nil, rt)
		// Nothing to adapt: Run returns at once, without a ticker left behind.
		if err := s.Run(t.Context()); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if rt.procs() != 1 {
			t.Fatalf("%d procs, want 1", rt.procs())
		}
	})
}

func TestScalerCPUTimeError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeSched(2, steps(forever, 0.1))
		s := newScaler(Config{}, nil, nil, rt)
		done := make(chan error, 1)
		go func() { done <- s.Run(t.Context()) }()
		time.Sleep(time.Second)
		synctest.Wait()
		if rt.procs() != 1 {
			t.Fatalf("%d procs at light load, want 1", rt.procs())
		}
		boom := errors.New("boom")
		rt.mu.Lock()
		rt.err = boom
		rt.mu.Unlock()
		if err := <-done; !errors.Is(err, boom) {
			t.Fatalf("Run: %v, want %v", err, boom)
		}
		// A scaler that stopped leaves the runtime's default, not one P.
		if rt.procs() != 2 {
			t.Fatalf("%d procs after a failed Run, want the default 2", rt.procs())
		}
	})
}

func TestNewRespectsEnvironment(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	if _, err := New(Config{}, nil, nil); !errors.Is(err, ErrFixed) {
		t.Fatalf("New with GOMAXPROCS set: %v, want ErrFixed", err)
	}
}

// TestScalerRealRuntime drives the real scheduler: busy goroutines get the runtime's
// default, and when they stop the process goes back to one P.
func TestScalerRealRuntime(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the runtime's default is one P here: nothing to adapt")
	}
	t.Cleanup(runtime.SetDefaultGOMAXPROCS)
	want := runtime.GOMAXPROCS(0)
	// Low thresholds: other test binaries may share the machine.
	s, err := New(Config{Interval: 20 * time.Millisecond, Up: 0.5, UpAfter: 60 * time.Millisecond, Down: 0.3, DownAfter: 200 * time.Millisecond}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	waitProcs := func(n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for runtime.GOMAXPROCS(0) != n {
			if time.Now().After(deadline) {
				t.Fatalf("GOMAXPROCS %d, want %d", runtime.GOMAXPROCS(0), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitProcs(1)

	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
			}
		})
	}
	waitProcs(want)
	stop.Store(true)
	wg.Wait()
	waitProcs(1)
}
