// Package serve runs the HTTP endpoints every Ambit data-plane process has, on Istio's
// ports: readiness (:15021, /healthz/ready), Prometheus metrics (:15020, /metrics) and
// admin (localhost:15000: readiness, profiling, and what the process adds, such as
// ztunnel's /config_dump).
package serve

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Default ports, as in Istio.
const (
	PortAdmin     = 15000
	PortMetrics   = 15020
	PortReadiness = 15021
)

// Off as an address disables that endpoint.
const Off = "off"

// ReadyPath is where readiness is served, on the readiness and the admin endpoint.
const ReadyPath = "/healthz/ready"

// Config is where the endpoints listen. Zero fields take the defaults.
type Config struct {
	ReadinessAddr string // default ":15021"
	MetricsAddr   string // default ":15020"
	AdminAddr     string // default "127.0.0.1:15000": profiles and internals stay on the node
}

// WithDefaults returns c with unset fields filled in.
func (c Config) WithDefaults() Config {
	if c.ReadinessAddr == "" {
		c.ReadinessAddr = ":" + strconv.Itoa(PortReadiness)
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = ":" + strconv.Itoa(PortMetrics)
	}
	if c.AdminAddr == "" {
		c.AdminAddr = "127.0.0.1:" + strconv.Itoa(PortAdmin)
	}
	return c
}

// RegisterFlags registers -readiness-addr, -metrics-addr and -admin-addr, defaulting
// to c's values with the defaults filled in.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	*c = c.WithDefaults()
	fs.StringVar(&c.ReadinessAddr, "readiness-addr", c.ReadinessAddr, `readiness endpoint ("off" disables)`)
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, `Prometheus endpoint ("off" disables)`)
	fs.StringVar(&c.AdminAddr, "admin-addr", c.AdminAddr, `admin endpoint ("off" disables)`)
}

// Handlers are what the endpoints serve.
type Handlers struct {
	// Ready reports readiness: nil is ready (200), an error is not (503, with its text).
	Ready func() error
	// Metrics is served on /metrics; nil serves an empty registry.
	Metrics prometheus.Gatherer
	// Admin are further admin endpoints by path, e.g. "/config_dump".
	Admin  map[string]http.Handler
	Logger *slog.Logger
}

// Endpoint names one of the endpoints.
type Endpoint int

const (
	Readiness Endpoint = iota
	Metrics
	Admin
	numEndpoints
)

// Servers are the running endpoints.
type Servers struct {
	srvs  []*http.Server
	addrs [numEndpoints]net.Addr
	wg    sync.WaitGroup
}

// Start listens on every endpoint that is not off and serves until Shutdown or Close.
// If one cannot listen, none is left running.
func Start(cfg Config, h Handlers) (*Servers, error) {
	cfg = cfg.WithDefaults()
	log := h.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ready := ReadyHandler(h.Ready)
	gatherer := h.Metrics
	if gatherer == nil {
		gatherer = prometheus.NewRegistry()
	}
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	readiness := http.NewServeMux()
	readiness.Handle(ReadyPath, ready)
	admin := http.NewServeMux()
	admin.Handle(ReadyPath, ready)
	// Profiling on the admin endpoint only (localhost by default).
	admin.HandleFunc("/debug/pprof/", pprof.Index)
	admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
	admin.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	admin.HandleFunc("/debug/pprof/trace", pprof.Trace)
	for path, hh := range h.Admin {
		admin.Handle(path, hh)
	}

	s := &Servers{}
	for _, e := range []struct {
		ep   Endpoint
		addr string
		h    http.Handler
	}{{Readiness, cfg.ReadinessAddr, readiness}, {Metrics, cfg.MetricsAddr, metrics}, {Admin, cfg.AdminAddr, admin}} {
		if e.addr == Off {
			continue
		}
		ln, err := net.Listen("tcp", e.addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listen %s: %w", e.addr, err)
		}
		s.addrs[e.ep] = ln.Addr()
		srv := &http.Server{
			Handler:           e.h,
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		s.srvs = append(s.srvs, srv)
		s.wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server error", "addr", e.addr, "error", err)
			}
		})
	}
	return s, nil
}

// Addr is the address e listens on (with the port chosen when configured as ":0"), or
// nil when it is off.
func (s *Servers) Addr(e Endpoint) net.Addr {
	if e < 0 || e >= numEndpoints {
		return nil
	}
	return s.addrs[e]
}

// Shutdown stops accepting, lets requests in flight finish until ctx ends, then closes
// what is left (returning ctx's error) and waits for the servers to return.
func (s *Servers) Shutdown(ctx context.Context) error {
	var errs []error
	for _, srv := range s.srvs {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, err)
			srv.Close()
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// Close stops the servers and their connections at once and waits for them.
func (s *Servers) Close() error {
	for _, srv := range s.srvs {
		srv.Close()
	}
	s.wg.Wait()
	return nil
}

// ReadyHandler answers 200 "ready" while ready returns nil, else 503 with the reason.
// A nil ready is always ready.
func ReadyHandler(ready func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
}
