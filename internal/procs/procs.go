// Package procs adapts the Go scheduler's parallelism (GOMAXPROCS) to a process's load.
//
// With more than one P, the Go scheduler wakes another thread whenever a goroutine
// becomes runnable while a P is idle, so that runnable work never waits for a P. A node
// tunnel at light load sees a network event, works for microseconds and sleeps again,
// thousands of times per second, and with several Ps most events then wake two threads
// instead of one. On a VM each wake-up of an idle vCPU is an exit to the hypervisor:
// docs/performance.md ("Adaptive GOMAXPROCS") has 11 context switches per tunnelled connection
// and tunnel end with two Ps against 8 with one, and no less throughput.
// Scaler runs the process with one P while its work fits on one and goes back to the
// runtime's default (which follows CPU count, affinity and cgroup quota) as soon as it
// does not: when the P is busy all the time, or when goroutines keep queueing for it
// (parallel bulk streams, which wait for each other on one P long before it is full).
package procs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config tunes a Scaler. Zero fields take the defaults.
type Config struct {
	// Interval is how often CPU use is measured and decisions are taken. Default 100ms.
	Interval time.Duration
	// Sample is how often the run queue is sampled while the process is busy (used at
	// least Busy cores in the last interval); otherwise it is not sampled and only CPU
	// use counts. Each sample is a timer wake-up, which costs a light load more than the
	// sample itself. Default 10ms.
	Sample time.Duration
	// Busy is the CPU use, in cores, from which the run queue is sampled: where parallel
	// work can start to queue. Default 0.5.
	Busy float64
	// Up is the CPU use, in cores, at which one P counts as full. A process on one P
	// cannot use much more than one core, and a busy one (a single bulk stream) stays
	// around 0.85-0.89 on the benchmark machine without gaining anything from more Ps.
	// Default 0.9.
	Up float64
	// Queue is the average number of runnable goroutines waiting for a P at which work
	// that could run in parallel waits for the one P. Default 1.5.
	Queue float64
	// UpAfter is how long one P must stay full (Up) or queued (Queue) before the process
	// gets the runtime's default: how long a load that outgrows one P waits for more.
	// Default 300ms.
	UpAfter time.Duration
	// Down and DownQueue are the CPU use and average run queue below which, both held for
	// DownAfter, the process goes back to one P. Down is below Up because one P costs
	// less CPU for the same work than several. Defaults 0.7 and 0.5.
	Down      float64
	DownQueue float64
	// DownAfter is how long the load must stay below Down and DownQueue before going
	// back to one P. Default 2s.
	DownAfter time.Duration
}

func (c *Config) setDefaults() {
	def := func(v *float64, d float64) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur(&c.Interval, 100*time.Millisecond)
	defDur(&c.Sample, 10*time.Millisecond)
	defDur(&c.UpAfter, 300*time.Millisecond)
	defDur(&c.DownAfter, 2*time.Second)
	def(&c.Busy, 0.5)
	def(&c.Up, 0.9)
	def(&c.Queue, 1.5)
	def(&c.Down, 0.7)
	def(&c.DownQueue, 0.5)
}

// ErrFixed is returned by New when the GOMAXPROCS environment variable fixes the
// scheduler's parallelism: the operator's setting wins.
var ErrFixed = errors.New("GOMAXPROCS is set in the environment")

// Log keys.
const (
	keyProcs = "gomaxprocs"
	keyCores = "cores"
	keyQueue = "runnable"
)

// sched is the part of the runtime a Scaler drives; tests replace it.
type sched interface {
	procs() int
	setOne()
	setDefault()
	cpuTime() (time.Duration, error)
	runnable() int // goroutines waiting for a P now
}

// Scaler switches the process between one P and the runtime's default.
type Scaler struct {
	cfg     Config
	log     *slog.Logger
	rt      sched
	changes prometheus.Counter

	max       int       // the runtime's default when last applied
	highSince time.Time // start of the current run of full or queued intervals (on one P)
	lowSince  time.Time // start of the current run of quiet intervals (on more)
}

// New returns a Scaler. It fails with ErrFixed when the GOMAXPROCS environment variable
// is set. reg may be nil.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Scaler, error) {
	if os.Getenv("GOMAXPROCS") != "" {
		return nil, ErrFixed
	}
	return newScaler(cfg, log, reg, newRuntimeSched()), nil
}

func newScaler(cfg Config, log *slog.Logger, reg prometheus.Registerer, rt sched) *Scaler {
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scaler{
		cfg: cfg,
		log: log,
		rt:  rt,
		max: rt.procs(), // nothing has customised GOMAXPROCS yet: the runtime's default
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ambit_gomaxprocs_changes_total",
			Help: "Times the adaptive scheduler setting switched GOMAXPROCS between 1 and the runtime's default.",
		}),
	}
	if reg != nil {
		reg.MustRegister(s.changes)
	}
	return s
}

// Run starts the process on one P and adapts GOMAXPROCS until ctx ends. It returns at
// once when the runtime's default is a single P anyway. If it fails, it leaves the
// runtime's default in place.
func (s *Scaler) Run(ctx context.Context) (err error) {
	if s.max <= 1 {
		return nil
	}
	defer func() {
		if err != nil {
			s.rt.setDefault()
		}
	}()
	last, err := s.rt.cpuTime()
	if err != nil {
		return fmt.Errorf("read process CPU time: %w", err)
	}
	s.rt.setOne()
	lastAt := time.Now()
	var (
		busy             bool
		queued, nSamples int
	)
	t := time.NewTimer(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := time.Now()
		if busy {
			queued += s.rt.runnable()
			nSamples++
		}
		if elapsed := now.Sub(lastAt); elapsed >= s.cfg.Interval {
			cpu, err := s.rt.cpuTime()
			if err != nil {
				return fmt.Errorf("read process CPU time: %w", err)
			}
			cores := float64(cpu-last) / float64(elapsed)
			queue := 0.0
			if nSamples > 0 {
				queue = float64(queued) / float64(nSamples)
			}
			s.step(now, cores, queue)
			last, lastAt = cpu, now
			busy, queued, nSamples = cores >= s.cfg.Busy, 0, 0
		}
		if busy {
			t.Reset(s.cfg.Sample)
		} else {
			t.Reset(lastAt.Add(s.cfg.Interval).Sub(time.Now()))
		}
	}
}

// step takes one interval's CPU use, in cores, and average run queue, and changes
// GOMAXPROCS if they call for it.
func (s *Scaler) step(now time.Time, cores, queue float64) {
	cur := s.rt.procs()
	switch {
	case cur == 1 && (cores >= s.cfg.Up || queue >= s.cfg.Queue):
		s.lowSince = time.Time{}
		if s.highSince.IsZero() {
			// The interval that ends now is the first full or queued one.
			s.highSince = now.Add(-s.cfg.Interval)
		}
		if now.Sub(s.highSince) >= s.cfg.UpAfter {
			s.highSince = time.Time{}
			s.rt.setDefault()
			s.max = s.rt.procs()
			if s.max != cur {
				s.changes.Inc()
				s.log.Debug("more procs for load", keyProcs, s.max, keyCores, cores, keyQueue, queue)
			}
		}
	case cur > 1 && cores < s.cfg.Down && queue < s.cfg.DownQueue:
		s.highSince = time.Time{}
		if s.lowSince.IsZero() {
			s.lowSince = now.Add(-s.cfg.Interval)
		}
		if now.Sub(s.lowSince) >= s.cfg.DownAfter {
			s.rt.setOne()
			s.lowSince = time.Time{}
			s.changes.Inc()
			s.log.Debug("one proc for load", keyProcs, 1, keyCores, cores, keyQueue, queue)
		}
	default:
		s.highSince, s.lowSince = time.Time{}, time.Time{}
	}
}

// runtimeSched is the real runtime.
type runtimeSched struct{ sample []metrics.Sample }

func newRuntimeSched() *runtimeSched {
	return &runtimeSched{sample: []metrics.Sample{{Name: "/sched/goroutines/runnable:goroutines"}}}
}

func (*runtimeSched) procs() int  { return runtime.GOMAXPROCS(0) }
func (*runtimeSched) setOne()     { runtime.GOMAXPROCS(1) }
func (*runtimeSched) setDefault() { runtime.SetDefaultGOMAXPROCS() }

func (*runtimeSched) cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// runnable reads the runtime's count of runnable goroutines (its run queues: O(Ps)).
func (r *runtimeSched) runnable() int {
	metrics.Read(r.sample)
	if r.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int(r.sample[0].Value.Uint64())
}
