// Package service runs the built-in CA as the ambit-ca service: the CA's root in a state
// directory, nodes authenticated by a token file (local mode) or Kubernetes TokenReview,
// each node authorized for the identities of the workloads scheduled on it (by the mesh
// model file, or by the pods the API server places on it), in Kubernetes mode also a
// waypoint pod by its own token for its own identity, and the issuing server on its
// listener. Kubernetes mode links client-go, which is why this is not package ca
// (ztunnel imports that for its client).
package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/identity/ca"
	"github.com/ambitmesh/ambit/identity/kubeauth"
	"github.com/ambitmesh/ambit/internal/flagvalue"
)

// Defaults, as the Helm chart and the docs know them.
const (
	DefaultStateDir      = "/var/lib/ambit-ca"
	DefaultListen        = "unix:///run/ambit/ca.sock"
	DefaultTokenAudience = "ambit-ca"
	// DefaultZtunnelServiceAccount is the chart's ztunnel service account.
	DefaultZtunnelServiceAccount = "ambit-system/ambit-ztunnel"
)

// Config is everything the CA service needs. Zero fields take the defaults.
type Config struct {
	StateDir    string // root key (0600) and root.pem
	TrustDomain string
	Listen      string // "unix:///path" or "host:port"
	LeafTTL     time.Duration

	// Local mode: node tokens ("<node> <token>" lines) and the mesh model that places
	// workloads on nodes.
	TokenFile string
	ModelPath string

	// Kubernetes mode (also set by Kubeconfig): nodes authenticate with ztunnel's
	// service-account tokens for TokenAudience, workloads are placed by the pods
	// scheduled on each node, a waypoint pod's own pod-bound token (same audience) gets
	// its own identity, and the root is published to RootConfigMap ("namespace/name")
	// when set.
	Kube                   bool
	Kubeconfig             string
	TokenAudience          string
	ZtunnelServiceAccounts []string // "namespace/name"
	RootConfigMap          string
}

// WithDefaults returns c with unset fields filled in.
func (c Config) WithDefaults() Config {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.LeafTTL == 0 {
		c.LeafTTL = ca.DefaultLeafTTL
	}
	if c.Kubeconfig != "" {
		c.Kube = true
	}
	if c.TokenAudience == "" {
		c.TokenAudience = DefaultTokenAudience
	}
	if c.ZtunnelServiceAccounts == nil {
		c.ZtunnelServiceAccounts = []string{DefaultZtunnelServiceAccount}
	}
	return c
}

// RegisterFlags registers ambit-ca's flags on fs, defaulting to c's values with the
// defaults filled in.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	*c = c.WithDefaults()
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory holding the root key (0600) and root.pem")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "SPIFFE trust domain")
	fs.StringVar(&c.Listen, "listen", c.Listen, "listen address: unix:///path or host:port")
	fs.StringVar(&c.TokenFile, "tokens", c.TokenFile, `node token file, lines "<node> <token>" (mode 0600)`)
	fs.StringVar(&c.ModelPath, "model", c.ModelPath, "mesh model YAML file; a node may obtain only identities of workloads scheduled on it")
	fs.DurationVar(&c.LeafTTL, "leaf-ttl", c.LeafTTL, "workload certificate lifetime")
	fs.BoolVar(&c.Kube, "kube", c.Kube, "Kubernetes mode: authenticate nodes with TokenReview and authorize from the pods scheduled on them")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig file (Kubernetes mode; default in-cluster)")
	fs.StringVar(&c.TokenAudience, "token-audience", c.TokenAudience, "audience of the ztunnel and waypoint service-account tokens (Kubernetes mode)")
	fs.Var(flagvalue.ListVar(&c.ZtunnelServiceAccounts), "ztunnel-service-account", "comma-separated namespace/name of the service accounts ztunnel runs as (Kubernetes mode)")
	fs.StringVar(&c.RootConfigMap, "root-configmap", c.RootConfigMap, "namespace/name of a ConfigMap to publish root.pem into (Kubernetes mode)")
}

// Run serves the CA until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	cfg = cfg.WithDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !cfg.Kube {
		if cfg.TokenFile == "" {
			return errors.New("-tokens is required (or -kube)")
		}
		if cfg.ModelPath == "" {
			return errors.New("-model is required (it decides which node may hold which identity), or -kube")
		}
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("-trust-domain %q: %w", cfg.TrustDomain, err)
	}
	authority, err := ca.New(ca.Config{StateDir: cfg.StateDir, TrustDomain: td, LeafTTL: cfg.LeafTTL})
	if err != nil {
		return err
	}
	authn, pods, err := nodeAuth(ctx, cfg, log)
	if err != nil {
		return err
	}
	srv, err := ca.NewServer(ca.ServerConfig{CA: authority, Authenticator: authn, Authorizer: ca.PodAuthorizer{Pods: pods}, Logger: log})
	if err != nil {
		return err
	}
	l, err := ca.Listen(cfg.Listen)
	if err != nil {
		return err
	}
	log.Info("ambit-ca serving", "listen", cfg.Listen, "trust_domain", td.Name(), "root", filepath.Join(cfg.StateDir, ca.RootFile))
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

// nodeAuth returns how nodes are authenticated and where their pods are listed.
func nodeAuth(ctx context.Context, cfg Config, log *slog.Logger) (ca.Authenticator, ca.PodLister, error) {
	if !cfg.Kube {
		tokens, err := ca.LoadTokenFile(cfg.TokenFile)
		if err != nil {
			return nil, nil, err
		}
		model, err := ca.NewModelPods(cfg.ModelPath, log)
		if err != nil {
			return nil, nil, err
		}
		return tokens, model, nil
	}
	client, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	tr, err := kubeauth.New(kubeauth.Config{Client: client, Audience: cfg.TokenAudience, ServiceAccounts: cfg.ZtunnelServiceAccounts})
	if err != nil {
		return nil, nil, err
	}
	pods, err := newPodInformer(client)
	if err != nil {
		return nil, nil, err
	}
	go pods.Run(ctx)
	if cfg.RootConfigMap != "" {
		if err := publishRoot(ctx, client, cfg.RootConfigMap, filepath.Join(cfg.StateDir, ca.RootFile), log); err != nil {
			return nil, nil, err
		}
	}
	return tr, pods, nil
}
