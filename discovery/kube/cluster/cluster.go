// Package cluster assembles the Kubernetes model source with all its feeds (the core
// informers, the Nodes' topology, Istio's security policies and DestinationRules, the
// Gateway API's waypoints and routes) from a
// kubeconfig, for the processes that read the mesh from the API server (ztunnel, the
// waypoint). It links every client the feeds need, so the packages that only use the
// model do not.
package cluster

import (
	"fmt"
	"log/slog"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/discovery/kube"
	"github.com/ambitmesh/ambit/discovery/kube/gatewayapi"
	"github.com/ambitmesh/ambit/discovery/kube/istiopolicy"
	"github.com/ambitmesh/ambit/discovery/kube/istiotraffic"
)

// Config says how to reach the API server and what to watch.
type Config struct {
	// Kubeconfig is the kubeconfig file; "" for the pod's in-cluster config.
	Kubeconfig string
	UserAgent  string
	// RootNamespace is the policies' root namespace (policy's default when empty).
	RootNamespace string
	// WaypointClass is the waypoints' GatewayClass (discovery's default when empty).
	WaypointClass string
	// Routes also watches HTTPRoutes and ReferenceGrants (a waypoint needs them).
	Routes bool
	// DestinationRules also watches Istio's DestinationRules (a waypoint compiles
	// them; ztunnel does not).
	DestinationRules bool
	Options          discovery.EnrollmentOptions
	Logger           *slog.Logger
}

// New returns a source that, once Run, keeps the returned store in sync with the
// cluster.
func New(cfg Config) (*kube.Source, *discovery.Store, error) {
	rc, err := kube.RestConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	rc.UserAgent = cfg.UserAgent
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	istio, err := istioclient.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("istio client: %w", err)
	}
	gw, err := gwclient.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway api client: %w", err)
	}
	meta, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("metadata client: %w", err)
	}
	kc := kube.Config{
		Client:   client,
		Metadata: meta,
		Policies: istiopolicy.New(istio, client.Discovery(), cfg.RootNamespace, cfg.Logger),
		Gateways: gatewayapi.New(gw, client.Discovery(), gatewayapi.Config{Class: cfg.WaypointClass, Routes: cfg.Routes, Logger: cfg.Logger}),
		Options:  cfg.Options,
		Logger:   cfg.Logger,
	}
	if cfg.DestinationRules {
		dyn, err := dynamic.NewForConfig(rc)
		if err != nil {
			return nil, nil, fmt.Errorf("dynamic client: %w", err)
		}
		kc.Traffic = istiotraffic.New(dyn, client.Discovery(), cfg.Logger)
	}
	store := discovery.NewStore()
	src, err := kube.New(kc, store)
	if err != nil {
		return nil, nil, err
	}
	return src, store, nil
}
