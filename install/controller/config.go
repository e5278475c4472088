package controller

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/identity"
	"github.com/ambitmesh/ambit/internal/flagvalue"
)

// ErrConfig marks configuration errors.
var ErrConfig = errors.New("invalid controller configuration")

// Defaults.
const (
	// DefaultControllerName is the GatewayClass controllerName the controller owns:
	// Istio's for its istio-waypoint class, so a class Istio users already have
	// keeps working.
	DefaultControllerName = "istio.io/mesh-controller"
	DefaultResync         = 5 * time.Minute
	DefaultPullPolicy     = corev1.PullIfNotPresent
)

// Config configures the controller.
type Config struct {
	// Kubeconfig is the kubeconfig file; "" for the pod's in-cluster config.
	Kubeconfig string
	// WaypointClass is the waypoints' GatewayClass; ControllerName the controllerName
	// of that class the controller answers for.
	WaypointClass  string
	ControllerName string
	// Image, PullPolicy and Args are the waypoint container's: the image's entrypoint
	// is the waypoint binary; Args are added after the controller's own flags.
	Image      string
	PullPolicy corev1.PullPolicy
	Args       []string
	// TrustDomain, CAAddr and CARootConfigMap ("namespace/name", key root.pem) are
	// what the waypoint pods need to get their certificates.
	TrustDomain     string
	CAAddr          string
	CARootConfigMap string
	// Resync is how often every object is reconciled again even without events.
	Resync time.Duration
}

// WithDefaults returns c with unset fields filled in.
func (c Config) WithDefaults() Config {
	if c.WaypointClass == "" {
		c.WaypointClass = discovery.DefaultWaypointClass
	}
	if c.ControllerName == "" {
		c.ControllerName = DefaultControllerName
	}
	if c.PullPolicy == "" {
		c.PullPolicy = DefaultPullPolicy
	}
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	if c.Resync == 0 {
		c.Resync = DefaultResync
	}
	return c
}

// Validate reports the first problem of c (after WithDefaults).
func (c Config) Validate() error {
	switch {
	case c.Image == "":
		return fmt.Errorf("%w: -waypoint-image is required", ErrConfig)
	case c.CAAddr == "":
		return fmt.Errorf("%w: -ca-addr is required (the CA's Service, e.g. ambit-ca.ambit-system.svc:15012)", ErrConfig)
	case c.Resync < 0:
		return fmt.Errorf("%w: -resync must not be negative", ErrConfig)
	}
	switch c.PullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return fmt.Errorf("%w: -waypoint-pull-policy %q is not Always, IfNotPresent or Never", ErrConfig, c.PullPolicy)
	}
	if errs := validation.IsDNS1123Subdomain(c.WaypointClass); len(errs) > 0 {
		return fmt.Errorf("%w: -waypoint-class %q: %s", ErrConfig, c.WaypointClass, strings.Join(errs, "; "))
	}
	if ns, name, ok := strings.Cut(c.CARootConfigMap, "/"); !ok || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
		return fmt.Errorf("%w: -ca-root-configmap %q is not namespace/name", ErrConfig, c.CARootConfigMap)
	}
	if domain, path, ok := strings.Cut(c.ControllerName, "/"); !ok || path == "" || len(validation.IsDNS1123Subdomain(domain)) > 0 {
		return fmt.Errorf("%w: -controller-name %q is not domain/path (e.g. istio.io/mesh-controller)", ErrConfig, c.ControllerName)
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("%w: -trust-domain %q: %v", ErrConfig, c.TrustDomain, err)
	}
	for _, a := range c.Args {
		if !strings.HasPrefix(a, "-") {
			return fmt.Errorf("%w: -waypoint-args: %q is not a flag", ErrConfig, a)
		}
	}
	return nil
}

// RegisterFlags registers the controller's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	*c = c.WithDefaults()
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&c.WaypointClass, "waypoint-class", c.WaypointClass, "GatewayClass of waypoints")
	fs.StringVar(&c.ControllerName, "controller-name", c.ControllerName, "controllerName of the waypoint GatewayClass this controller answers for")
	fs.StringVar(&c.Image, "waypoint-image", c.Image, "image of the waypoint pods (entrypoint: the waypoint binary)")
	fs.Func("waypoint-pull-policy", "imagePullPolicy of the waypoint pods (default IfNotPresent)", func(s string) error {
		c.PullPolicy = corev1.PullPolicy(s)
		return nil
	})
	fs.Var(flagvalue.ListVar(&c.Args), "waypoint-args", "comma-separated extra flags of the waypoint processes, e.g. -log-level=debug,-log-json=true")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "SPIFFE trust domain")
	fs.StringVar(&c.CAAddr, "ca-addr", c.CAAddr, "address of the built-in CA the waypoints use (host:port)")
	fs.StringVar(&c.CARootConfigMap, "ca-root-configmap", c.CARootConfigMap, "namespace/name of the CA's root ConfigMap (key root.pem), copied into each waypoint's namespace")
	fs.DurationVar(&c.Resync, "resync", c.Resync, "how often everything is reconciled without events")
}
