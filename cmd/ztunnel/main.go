// Command ztunnel is Ambit's node tunnel.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/ambitmesh/ambit/internal/logbuf"
	"github.com/ambitmesh/ambit/internal/procs"
	"github.com/ambitmesh/ambit/ztunnel"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

func splitLabel(flagName, s string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	if !ok || key == "" || value == "" {
		return "", "", fmt.Errorf("-%s %q: want key=value", flagName, s)
	}
	return key, value, nil
}

func run() error {
	var (
		cfg        ztunnel.Config
		uplinks    string
		outbound   string
		inbound    string
		hboneAddr  string
		logJSON    bool
		logLevel   string
		logFlush   time.Duration
		mark, mask uint
		kubeMode   bool
		kubeconfig string
		nsLabel    string
		podLabel   string
		identSrc   string
		spireCfg   spireFlags
		maxProcs   string
	)
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	fs.StringVar(&cfg.NodeName, "node", os.Getenv("NODE_NAME"), "name of this node in the mesh model (env NODE_NAME)")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&cfg.ModelPath, "model", "", "path of the YAML mesh model (local mode)")
	fs.BoolVar(&kubeMode, "kube", false, "read the mesh model from Kubernetes (in-cluster config unless -kubeconfig)")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (implies -kube)")
	fs.StringVar(&nsLabel, "enroll-namespace-label", "istio.io/dataplane-mode=ambient", "namespace label key=value that enrolls a namespace's pods")
	fs.StringVar(&podLabel, "opt-out-pod-label", "istio.io/dataplane-mode=none", "pod label key=value that opts a pod out")
	fs.StringVar(&identSrc, "identity", "ca", `identity source: "ca" (the built-in CA) or "spire" (a SPIRE agent)`)
	fs.StringVar(&spireCfg.workloadSocket, "spire-workload-socket", "unix:///run/spire/agent/public/api.sock", "SPIRE agent Workload API socket (ztunnel's own SVID and bundles)")
	fs.StringVar(&spireCfg.adminSocket, "spire-admin-socket", "unix:///run/spire/agent/admin/admin.sock", "SPIRE agent admin socket (Delegated Identity API)")
	fs.StringVar(&spireCfg.selectors, "spire-selectors", "k8s:ns:{ns},k8s:sa:{sa}", "comma-separated selector templates for a workload identity ({ns}, {sa} are replaced)")
	fs.StringVar(&cfg.CAAddr, "ca-addr", "", `built-in CA address ("unix:///path" or "host:port")`)
	fs.StringVar(&cfg.CATokenFile, "ca-token-file", "", "file holding this node's bearer token for the CA")
	fs.StringVar(&cfg.CARootFile, "ca-root-file", "", "PEM file with the mesh root certificate(s)")
	fs.StringVar(&uplinks, "uplinks", "eth0", "comma-separated interfaces facing other nodes")
	fs.StringVar(&cfg.BPFPinPath, "bpf-pin-path", "/sys/fs/bpf/ambit", "bpffs directory for pinned programs, links and maps")
	fs.UintVar(&mark, "mark", 0x400, "packet mark for captured traffic")
	fs.UintVar(&mask, "mark-mask", 0xf00, "mask of the mark bits ztunnel owns")
	fs.IntVar(&cfg.RouteTable, "route-table", 133, "routing table for captured traffic")
	fs.StringVar(&outbound, "outbound-addr", "127.0.0.1:15001", "transparent outbound listener")
	fs.StringVar(&inbound, "inbound-addr", "127.0.0.1:15006", "transparent inbound plaintext listener")
	fs.StringVar(&hboneAddr, "hbone-addr", "127.0.0.1:15008", "transparent inbound HBONE listener")
	fs.StringVar(&cfg.ReadinessAddr, "readiness-addr", ":15021", `readiness endpoint ("off" disables)`)
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15020", `Prometheus endpoint ("off" disables)`)
	fs.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", `admin endpoint ("off" disables)`)
	fs.IntVar(&cfg.HBONEConnsPerPeer, "hbone-conns-per-peer", 4, "HBONE connections that concurrent streams to one peer (per pair of identities) may spread over")
	fs.DurationVar(&cfg.HBONEPoolIdleTimeout, "hbone-pool-idle-timeout", time.Minute, "how long a pooled HBONE connection to a peer stays open without streams")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 0, "how long shutdown waits for connections (default 5s)")
	fs.StringVar(&maxProcs, "gomaxprocs", "auto", `Go scheduler parallelism: "auto" (one P while the work fits on one, else the runtime's default), "runtime" (the runtime's default) or a number`)
	fs.BoolVar(&logJSON, "log-json", false, "log as JSON")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&logFlush, "log-flush-interval", 100*time.Millisecond, "how long log lines may wait to be written in batches (0: write each line at once)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	cfg.Mark, cfg.MarkMask = uint32(mark), uint32(mask)
	for _, u := range strings.Split(uplinks, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.Uplinks = append(cfg.Uplinks, u)
		}
	}
	for _, a := range []struct {
		flag string
		s    string
		dst  *netip.AddrPort
	}{{"outbound-addr", outbound, &cfg.OutboundAddr}, {"inbound-addr", inbound, &cfg.InboundAddr}, {"hbone-addr", hboneAddr, &cfg.HBONEAddr}} {
		ap, err := netip.ParseAddrPort(a.s)
		if err != nil {
			return fmt.Errorf("-%s: %w", a.flag, err)
		}
		*a.dst = ap
	}

	var err error
	if cfg.Enrollment.NamespaceLabel, cfg.Enrollment.EnrollValue, err = splitLabel("enroll-namespace-label", nsLabel); err != nil {
		return err
	}
	if cfg.Enrollment.PodLabel, cfg.Enrollment.OptOutValue, err = splitLabel("opt-out-pod-label", podLabel); err != nil {
		return err
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if logFlush < 0 {
		return fmt.Errorf("-log-flush-interval %v: want >= 0", logFlush)
	}
	// One access-log line per connection: batched, they cost one write per flush
	// instead of one per connection.
	logOut := logbuf.New(os.Stderr, logFlush, 64<<10, 16<<20)
	defer logOut.Close()
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(logOut, opts)
	if logJSON {
		h = slog.NewJSONHandler(logOut, opts)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ambit_log_lines_dropped_total",
		Help: "Log lines dropped because the log output (stderr) was too slow to take them.",
	}, func() float64 { return float64(logOut.Dropped()) }))

	log := slog.New(h)
	deps := ztunnel.Deps{Logger: log, Registry: reg}
	if kubeMode || kubeconfig != "" {
		if err := kubeModel(&deps, kubeconfig, cfg.Enrollment, log); err != nil {
			return err
		}
	} else if cfg.ModelPath == "" {
		return fmt.Errorf("-model or -kube is required")
	}
	switch identSrc {
	case "ca":
	case "spire":
		src, err := spireSource(cfg.TrustDomain, spireCfg, log)
		if err != nil {
			return err
		}
		deps.Identity = src
	default:
		return fmt.Errorf(`-identity %q: want "ca" or "spire"`, identSrc)
	}
	scaler, err := schedProcs(maxProcs, log, reg)
	if err != nil {
		return err
	}
	z, err := ztunnel.New(cfg, deps)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if scaler == nil {
		return z.Run(ctx)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// The data plane does not depend on the scaler: if it stops, ztunnel keeps
		// running with the runtime's default.
		if err := scaler.Run(ctx); err != nil {
			log.Warn("gomaxprocs scaler stopped", "err", err)
		}
		return nil
	})
	g.Go(func() error {
		defer stop() // the scaler ends with ztunnel
		return z.Run(ctx)
	})
	return g.Wait()
}

// schedProcs applies -gomaxprocs: a fixed number now, or an adaptive Scaler to run.
func schedProcs(v string, log *slog.Logger, reg prometheus.Registerer) (*procs.Scaler, error) {
	switch v {
	case "runtime":
		return nil, nil
	case "auto":
		s, err := procs.New(procs.Config{}, log, reg)
		if errors.Is(err, procs.ErrFixed) {
			log.Info("gomaxprocs fixed by the environment", "gomaxprocs", runtime.GOMAXPROCS(0))
			return nil, nil
		}
		return s, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return nil, fmt.Errorf(`-gomaxprocs %q: want "auto", "runtime" or a number >= 1`, v)
	}
	runtime.GOMAXPROCS(n)
	return nil, nil
}
