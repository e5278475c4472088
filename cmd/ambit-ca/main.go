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
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/identity/kubeauth"
)

type config struct {
	stateDir    string
	trustDomain string
	listen      string
	tokens      string
	model       string
	leafTTL     time.Duration

	kube          bool
	kubeconfig    string
	audience      string
	ztunnelSAs    string
	rootConfigMap string
	logLevel      string
	logJSON       bool
}

func main() {
	var cfg config
	flag.StringVar(&cfg.stateDir, "state-dir", "/var/lib/ambit-ca", "directory holding the root key (0600) and root.pem")
	flag.StringVar(&cfg.trustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain")
	flag.StringVar(&cfg.listen, "listen", "unix:///run/ambit/ca.sock", "listen address: unix:///path or host:port")
	flag.StringVar(&cfg.tokens, "tokens", "", `node token file, lines "<node> <token>" (mode 0600)`)
	flag.StringVar(&cfg.model, "model", "", "mesh model YAML file; a node may obtain only identities of workloads scheduled on it")
	flag.DurationVar(&cfg.leafTTL, "leaf-ttl", 24*time.Hour, "workload certificate lifetime")
	flag.BoolVar(&cfg.kube, "kube", false, "Kubernetes mode: authenticate nodes with TokenReview and authorize from the pods scheduled on them")
	flag.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig file (Kubernetes mode; default in-cluster)")
	flag.StringVar(&cfg.audience, "token-audience", "ambit-ca", "audience of the ztunnel service-account tokens (Kubernetes mode)")
	flag.StringVar(&cfg.ztunnelSAs, "ztunnel-service-account", "ambit-system/ambit-ztunnel", "comma-separated namespace/name of the service accounts ztunnel runs as (Kubernetes mode)")
	flag.StringVar(&cfg.rootConfigMap, "root-configmap", "", "namespace/name of a ConfigMap to publish root.pem into (Kubernetes mode)")
	flag.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	flag.BoolVar(&cfg.logJSON, "log-json", false, "log as JSON")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "ambit-ca: -log-level:", err)
		os.Exit(2)
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if cfg.logJSON {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(h)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("ambit-ca stopped", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	if cfg.kubeconfig != "" {
		cfg.kube = true
	}
	if !cfg.kube {
		if cfg.tokens == "" {
			return errors.New("-tokens is required (or -kube)")
		}
		if cfg.model == "" {
			return errors.New("-model is required (it decides which node may hold which identity), or -kube")
		}
	}
	td, err := spiffeid.TrustDomainFromString(cfg.trustDomain)
	if err != nil {
		return fmt.Errorf("-trust-domain %q: %w", cfg.trustDomain, err)
	}
	authority, err := ca.New(ca.Config{StateDir: cfg.stateDir, TrustDomain: td, LeafTTL: cfg.leafTTL})
	if err != nil {
		return err
	}
	var (
		authn ca.Authenticator
		authz ca.Authorizer
	)
	if cfg.kube {
		client, err := kubeClient(cfg.kubeconfig)
		if err != nil {
			return err
		}
		tr, err := kubeauth.New(kubeauth.Config{Client: client, Audience: cfg.audience, ServiceAccounts: splitList(cfg.ztunnelSAs)})
		if err != nil {
			return err
		}
		pods, err := newPodAuthorizer(client)
		if err != nil {
			return err
		}
		go pods.Run(ctx)
		if cfg.rootConfigMap != "" {
			if err := publishRoot(ctx, client, cfg.rootConfigMap, filepath.Join(cfg.stateDir, ca.RootFile), log); err != nil {
				return err
			}
		}
		authn, authz = tr, pods
	} else {
		tokens, err := ca.LoadTokenFile(cfg.tokens)
		if err != nil {
			return err
		}
		model, err := newModelAuthorizer(cfg.model, log)
		if err != nil {
			return err
		}
		authn, authz = tokens, model
	}
	srv, err := ca.NewServer(ca.ServerConfig{CA: authority, Authenticator: authn, Authorizer: authz, Logger: log})
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

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
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
