// Command ambit-ca runs Ambit's built-in certificate authority: it issues
// workload certificates to node tunnels over HTTPS, each node only for the
// identities of the workloads the mesh model schedules on it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
)

type config struct {
	stateDir    string
	trustDomain string
	listen      string
	tokens      string
	model       string
	leafTTL     time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.stateDir, "state-dir", "/var/lib/ambit-ca", "directory holding the root key (0600) and root.pem")
	flag.StringVar(&cfg.trustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain")
	flag.StringVar(&cfg.listen, "listen", "unix:///run/ambit/ca.sock", "listen address: unix:///path or host:port")
	flag.StringVar(&cfg.tokens, "tokens", "", `node token file, lines "<node> <token>" (mode 0600)`)
	flag.StringVar(&cfg.model, "model", "", "mesh model YAML file; a node may obtain only identities of workloads scheduled on it")
	flag.DurationVar(&cfg.leafTTL, "leaf-ttl", 24*time.Hour, "workload certificate lifetime")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("ambit-ca stopped", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	if cfg.tokens == "" {
		return errors.New("-tokens is required")
	}
	if cfg.model == "" {
		return errors.New("-model is required (it decides which node may hold which identity)")
	}
	td, err := spiffeid.TrustDomainFromString(cfg.trustDomain)
	if err != nil {
		return fmt.Errorf("-trust-domain %q: %w", cfg.trustDomain, err)
	}
	authority, err := ca.New(ca.Config{StateDir: cfg.stateDir, TrustDomain: td, LeafTTL: cfg.leafTTL})
	if err != nil {
		return err
	}
	tokens, err := ca.LoadTokenFile(cfg.tokens)
	if err != nil {
		return err
	}
	authz, err := newModelAuthorizer(cfg.model, log)
	if err != nil {
		return err
	}
	srv, err := ca.NewServer(ca.ServerConfig{CA: authority, Authenticator: tokens, Authorizer: authz, Logger: log})
	if err != nil {
		return err
	}
	l, err := listen(cfg.listen)
	if err != nil {
		return err
	}
	log.Info("ambit-ca serving", "listen", cfg.listen, "trust_domain", td.Name(), "root", cfg.stateDir+"/"+ca.RootFile)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		srv.Close()
		return <-done
	case err := <-done:
		return err
	}
}

func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("-listen %q: unix socket path must be absolute (unix:///path)", addr)
		}
		// A socket left by a previous run would make Listen fail.
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(path)
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		return l, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}
