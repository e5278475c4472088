// Package route is the routing core of the waypoint: it compiles Gateway API
// HTTPRoutes and GRPCRoutes attached to Services (GAMMA, the mesh profile) into an immutable
// Table and answers, for one request, which rule applies, which backend it goes
// to and how the request, the response or a redirect are shaped. It does no I/O;
// the proxy calls it. docs/waypoint-routing.md describes the supported fields,
// the precedence and the statuses.
package route

import (
	"net/http"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ServicePort is one port of a Service.
type ServicePort struct {
	Name string
	Port uint16
}

// ServiceInfo is what the router needs to know of a Service, as a parent or a
// backend.
type ServiceInfo struct {
	Namespace, Name string
	Ports           []ServicePort
}

// Services looks a Service up; ok is false when it does not exist.
type Services func(namespace, name string) (ServiceInfo, bool)

// Status is the outcome of Compile for one route, for route.status: one entry
// per parentRef that names a Service. ParentRefs to other kinds (Gateways) are
// not the waypoint's and get no entry. ControllerName is left for the writer to
// fill; conditions have no LastTransitionTime (the writer keeps the old one when
// the status is unchanged, as meta.SetStatusCondition does).
type Status struct {
	Kind            string // KindHTTPRoute or KindGRPCRoute
	Namespace, Name string
	Generation      int64
	Parents         []gatewayv1.RouteParentStatus
}

// Table is the compiled routing of every route; it is immutable and safe for
// concurrent use.
type Table struct {
	parents map[parentKey]*Routes
}

type parentKey struct {
	ns, name string
	port     uint16
}

// Lookup returns the routes attached to port of Service ns/name, nil when no
// route attaches (the caller then forwards to the Service itself). The caller
// names the Service by the address the client connected to (VIP:port), never
// by the Host header.
func (t *Table) Lookup(ns, name string, port uint16) *Routes {
	if t == nil {
		return nil
	}
	return t.parents[parentKey{ns, name, port}]
}

// Routes are the rules of every route attached to one Service port, ordered by
// the Gateway API precedence.
type Routes struct {
	entries []entry
}

// Request is the part of an HTTP request that routing reads and the request
// filters rewrite. Header keys must be canonical (as net/http and
// http.Header.Set produce them). Path is the output of NormalizePath.
type Request struct {
	Method string
	// Scheme is the scheme the client used, "http" when empty; redirects keep it.
	Scheme string
	// Host is the request's authority (Host header), possibly with a port.
	// A header match on "Host" reads it.
	Host string
	// Port is the Service port the request was addressed to; a redirect without
	// scheme or port keeps it.
	Port     uint16
	Path     string
	RawQuery string
	Header   http.Header
}

// Rule is one rule of one route, as compiled.
type Rule struct {
	// Kind is the route's kind, KindHTTPRoute or KindGRPCRoute. A GRPCRoute
	// asks for gRPC's UNAVAILABLE where an HTTPRoute gets 500 (a rule without a
	// usable backend): the proxy answers 503, which gRPC clients read so.
	Kind string
	// Name is the rule's name, "" when unnamed.
	Name string
	// Route is the route's "namespace/name".
	Route string
	// Index is the rule's position in the route.
	Index int
	// Timeouts are the rule's timeouts.
	Timeouts Timeouts
	// Retry is the rule's retry policy, nil when the rule has none.
	Retry *Retry
	// Backends are the rule's backendRefs, in order.
	Backends []Backend
	// Mirrors are the RequestMirror filters, in order; the caller sends a copy
	// of the request to each mirror whose Sample is true and ignores the answer.
	Mirrors []Mirror
	// Filters are the rule's filters as written, for dumps.
	Filters []gatewayv1.HTTPRouteFilter

	request  []requestFilter
	response []headerFilter
	// prefix is the PathPrefix match, without a trailing '/', that
	// ReplacePrefixMatch replaces; validation gives such a rule exactly one.
	prefix string
	total  uint64
}

// Timeouts of a rule; 0 means none.
type Timeouts struct {
	// Request bounds the whole transaction, retries included (answer 504).
	Request time.Duration
	// BackendRequest bounds one attempt; never longer than Request when both are set.
	BackendRequest time.Duration
}

// Retry is a rule's retry stanza (GEP-1731). When present, connection errors are
// retried too.
type Retry struct {
	// Attempts is the maximum number of retries; -1 when unset (the caller picks
	// its default, Istio's is 2).
	Attempts int
	// Codes are the HTTP status codes to retry.
	Codes []int
	// Backoff is the minimum wait between attempts, 0 when unset.
	Backoff time.Duration
}

// Backend is one backendRef of a rule.
type Backend struct {
	Namespace, Name string
	Port            uint16
	Weight          int32
	// Invalid says why the reference does not resolve; requests that pick this
	// backend are answered 500.
	Invalid error

	request  headerFilter
	response headerFilter
}

// Mirror is one RequestMirror filter: the backend that receives copies and the
// fraction of requests mirrored.
type Mirror struct {
	Backend Backend
	// Numerator/Denominator is the fraction of requests to mirror.
	Numerator, Denominator int32
}

// Sample says whether the request with random value rnd is mirrored.
func (m *Mirror) Sample(rnd uint64) bool {
	if m.Denominator <= 0 {
		return false
	}
	return rnd%uint64(m.Denominator) < uint64(m.Numerator)
}

// Pick chooses a backend by weight for the random value rnd (any uint64, e.g.
// from math/rand/v2). ok is false when the rule has no backend with a weight
// above zero: the caller answers 500. A picked backend with Invalid set is
// answered 500 too, so an invalid reference keeps its share of the traffic.
func (r *Rule) Pick(rnd uint64) (b *Backend, ok bool) {
	if r.total == 0 {
		return nil, false
	}
	n := rnd % r.total
	for i := range r.Backends {
		w := uint64(r.Backends[i].Weight)
		if n < w {
			return &r.Backends[i], true
		}
		n -= w
	}
	return nil, false
}

// ApplyRequest applies the backend's own header filters to the request forwarded to it.
func (b *Backend) ApplyRequest(h http.Header) { b.request.apply(h) }

// ApplyResponse applies the backend's own response header filters; call it before
// Rule.ApplyResponse.
func (b *Backend) ApplyResponse(h http.Header) { b.response.apply(h) }

func condition(t gatewayv1.RouteConditionType, ok bool, reason gatewayv1.RouteConditionReason, msg string, gen int64) metav1.Condition {
	st := metav1.ConditionTrue
	if !ok {
		st = metav1.ConditionFalse
	}
	return metav1.Condition{Type: string(t), Status: st, Reason: string(reason), Message: msg, ObservedGeneration: gen}
}
