// Package daemon is the process around an Ambit command's component: its logger (text
// or JSON, batched), its Prometheus registry (Go and process collectors, dropped log
// lines), its scheduler parallelism (-gomaxprocs) and a lifetime that ends on SIGINT or
// SIGTERM. The data-plane mains (ztunnel, and the waypoint's) share it, so they log,
// measure and stop alike.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/ambitmesh/ambit/internal/logbuf"
	"github.com/ambitmesh/ambit/internal/procs"
)

// Log batching: one access-log line per connection costs one write per flush instead
// of one per connection; beyond the limit, while a write is stalled, lines are dropped.
const (
	logBatch = 64 << 10
	logLimit = 16 << 20

	defaultLogFlushInterval = 100 * time.Millisecond
)

// Config is a process's logging and scheduling. The zero value logs text at info,
// each line at once, and leaves GOMAXPROCS to the runtime.
type Config struct {
	LogLevel slog.Level
	LogJSON  bool
	// LogFlushInterval is how long a log line may wait to be written in a batch; 0
	// writes each line at once.
	LogFlushInterval time.Duration
	GOMAXPROCS       Procs
}

// RegisterLogFlags registers -log-level and -log-json, the logging every command has.
func (c *Config) RegisterLogFlags(fs *flag.FlagSet) {
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.BoolVar(&c.LogJSON, "log-json", c.LogJSON, "log as JSON")
}

// RegisterFlags registers the log flags, -log-flush-interval (default 100ms) and
// -gomaxprocs (default auto): a data-plane process's.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.RegisterLogFlags(fs)
	if c.LogFlushInterval == 0 {
		c.LogFlushInterval = defaultLogFlushInterval
	}
	if c.GOMAXPROCS == ProcsRuntime {
		c.GOMAXPROCS = ProcsAuto
	}
	fs.DurationVar(&c.LogFlushInterval, "log-flush-interval", c.LogFlushInterval, "how long log lines may wait to be written in batches (0: write each line at once)")
	fs.Var(&c.GOMAXPROCS, "gomaxprocs", `Go scheduler parallelism: "auto" (one P while the work fits on one, else the runtime's default), "runtime" (the runtime's default) or a number`)
}

// Procs is the scheduler parallelism: ProcsRuntime (the runtime's default), ProcsAuto
// (adaptive, see internal/procs) or a fixed number of Ps.
type Procs int

const (
	ProcsRuntime Procs = 0
	ProcsAuto    Procs = -1
)

func (p *Procs) String() string {
	switch {
	case p == nil || *p == ProcsRuntime:
		return "runtime"
	case *p == ProcsAuto:
		return "auto"
	}
	return strconv.Itoa(int(*p))
}

func (p *Procs) Set(s string) error {
	switch s {
	case "runtime":
		*p = ProcsRuntime
		return nil
	case "auto":
		*p = ProcsAuto
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return errors.New(`want "auto", "runtime" or a number >= 1`)
	}
	*p = Procs(n)
	return nil
}

// Daemon is a running process's logger and registry.
type Daemon struct {
	// Logger and Registry are for the process's components.
	Logger   *slog.Logger
	Registry *prometheus.Registry

	out    *logbuf.Writer
	scaler *procs.Scaler
}

// New sets the process up: logging to stderr, the registry, and GOMAXPROCS (fixed now,
// or adapted while Run runs).
func New(c Config) (*Daemon, error) { return newDaemon(c, os.Stderr) }

func newDaemon(c Config, w io.Writer) (*Daemon, error) {
	if c.LogFlushInterval < 0 {
		return nil, fmt.Errorf("-log-flush-interval %v: want >= 0", c.LogFlushInterval)
	}
	d := &Daemon{out: logbuf.New(w, c.LogFlushInterval, logBatch, logLimit), Registry: prometheus.NewRegistry()}
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	var h slog.Handler = slog.NewTextHandler(d.out, opts)
	if c.LogJSON {
		h = slog.NewJSONHandler(d.out, opts)
	}
	d.Logger = slog.New(h)
	d.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ambit_log_lines_dropped_total",
		Help: "Log lines dropped because the log output (stderr) was too slow to take them.",
	}, func() float64 { return float64(d.out.Dropped()) }))
	s, err := schedProcs(c.GOMAXPROCS, d.Logger, d.Registry)
	if err != nil {
		return nil, err
	}
	d.scaler = s
	return d, nil
}

// schedProcs applies p: a fixed number now, or an adaptive Scaler to run.
func schedProcs(p Procs, log *slog.Logger, reg prometheus.Registerer) (*procs.Scaler, error) {
	switch {
	case p == ProcsRuntime:
		return nil, nil
	case p == ProcsAuto:
		s, err := procs.New(procs.Config{}, log, reg)
		if errors.Is(err, procs.ErrFixed) {
			log.Info("gomaxprocs fixed by the environment", "gomaxprocs", runtime.GOMAXPROCS(0))
			return nil, nil
		}
		return s, err
	case p < 0:
		return nil, fmt.Errorf("gomaxprocs %d: want a number >= 1", int(p))
	}
	runtime.GOMAXPROCS(int(p))
	return nil, nil
}

// Run runs run until it returns or SIGINT or SIGTERM ends its context, with the
// GOMAXPROCS scaler beside it, then flushes the log.
func (d *Daemon) Run(run func(context.Context) error) error {
	defer d.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if d.scaler == nil {
		return run(ctx)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// The component does not depend on the scaler: if it stops, the process keeps
		// running with the runtime's default.
		if err := d.scaler.Run(ctx); err != nil {
			d.Logger.Warn("gomaxprocs scaler stopped", "error", err)
		}
		return nil
	})
	g.Go(func() error {
		defer stop() // the scaler ends with the component
		return run(ctx)
	})
	return g.Wait()
}

// Close flushes the log; later lines are written at once.
func (d *Daemon) Close() error { return d.out.Close() }
