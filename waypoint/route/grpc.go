package route

import (
	"fmt"
	"regexp"
	"strings"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// grpcRule is what a GRPCRoute rule has of its own: its matches, and why it
// cannot be carried as an HTTPRouteRule (a filter type outside its enum).
type grpcRule struct {
	matches []gatewayv1.GRPCRouteMatch
	invalid error
}

// grpcSource converts gr for compiling. Filters and backendRefs keep their
// fields (the schemas are the same); matches are compiled by compileMatch.
func grpcSource(gr *gatewayv1.GRPCRoute) *source {
	src := &source{kind: KindGRPCRoute, namespace: gr.Namespace, name: gr.Name, generation: gr.Generation,
		created: gr.CreationTimestamp.Time, parents: gr.Spec.ParentRefs}
	for i := range gr.Spec.Rules {
		gs := &gr.Spec.Rules[i]
		g := &grpcRule{matches: gs.Matches}
		hs := &gatewayv1.HTTPRouteRule{Name: gs.Name, SessionPersistence: gs.SessionPersistence}
		var err error
		if hs.Filters, err = grpcFilters(gs.Filters); err != nil {
			g.invalid = err
		}
		for j, br := range gs.BackendRefs {
			fs, err := grpcFilters(br.Filters)
			if err != nil && g.invalid == nil {
				g.invalid = fmt.Errorf("backendRefs[%d]: %w", j, err)
			}
			hs.BackendRefs = append(hs.BackendRefs, gatewayv1.HTTPBackendRef{BackendRef: br.BackendRef, Filters: fs})
		}
		src.rules = append(src.rules, sourceRule{rule: hs, grpc: g})
	}
	return src
}

// grpcFilters converts GRPCRoute filters to the HTTPRoute filters of the same
// type and fields.
func grpcFilters(fs []gatewayv1.GRPCRouteFilter) ([]gatewayv1.HTTPRouteFilter, error) {
	var out []gatewayv1.HTTPRouteFilter
	for i, f := range fs {
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier, gatewayv1.GRPCRouteFilterResponseHeaderModifier,
			gatewayv1.GRPCRouteFilterRequestMirror, gatewayv1.GRPCRouteFilterExtensionRef:
		default:
			return nil, unsupported("filters[%d]: unknown filter type %q", i, f.Type)
		}
		out = append(out, gatewayv1.HTTPRouteFilter{
			Type:                   gatewayv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		})
	}
	return out, nil
}

// The CEL rules of GRPCMethodMatch for Exact values.
var (
	grpcServiceName = regexp.MustCompile(`^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`)
	grpcMethodName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z_0-9]*$`)
)

const maxGRPCValue = 1024

// compileMatch validates and compiles match j of the rule; a rule without
// matches has one that matches every request.
func (g *grpcRule) compileMatch(j int) (entry, error) {
	e := entry{kind: matchGRPC}
	if j >= len(g.matches) {
		return e, nil
	}
	m := &g.matches[j]
	if m.Method != nil {
		rpc, err := compileMethodMatch(m.Method)
		if err != nil {
			return e, err
		}
		e.rpc = rpc
		if rpc.serviceRE != nil || rpc.service != "" {
			e.serviceLen = len(deref(m.Method.Service))
		}
		if rpc.methodRE != nil || rpc.method != "" {
			e.methodLen = len(deref(m.Method.Method))
		}
	}
	hs := make([]gatewayv1.HTTPHeaderMatch, len(m.Headers))
	for i, h := range m.Headers {
		hs[i] = gatewayv1.HTTPHeaderMatch{Type: (*gatewayv1.HeaderMatchType)(h.Type), Name: gatewayv1.HTTPHeaderName(h.Name), Value: h.Value}
	}
	var err error
	e.header, err = valueMatches("headers", hs, true)
	return e, err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// rpcMatch matches the path /<service>/<method> of a gRPC request; an empty
// part without an expression matches any value.
type rpcMatch struct {
	service, method     string
	serviceRE, methodRE *regexp.Regexp
}

func compileMethodMatch(mm *gatewayv1.GRPCMethodMatch) (*rpcMatch, error) {
	svc, method := deref(mm.Service), deref(mm.Method)
	if svc == "" && method == "" {
		return nil, fmt.Errorf("method: one or both of service and method must be set")
	}
	if len(svc) > maxGRPCValue || len(method) > maxGRPCValue {
		return nil, fmt.Errorf("method: service and method have at most %d characters", maxGRPCValue)
	}
	typ := gatewayv1.GRPCMethodMatchExact
	if mm.Type != nil {
		typ = *mm.Type
	}
	rpc := &rpcMatch{}
	switch typ {
	case gatewayv1.GRPCMethodMatchExact:
		if mm.Service != nil && !grpcServiceName.MatchString(svc) {
			return nil, fmt.Errorf("method: service %q is not a gRPC service name", svc)
		}
		if mm.Method != nil && !grpcMethodName.MatchString(method) {
			return nil, fmt.Errorf("method: method %q is not a gRPC method name", method)
		}
		rpc.service, rpc.method = svc, method
	case gatewayv1.GRPCMethodMatchRegularExpression:
		var err error
		if svc != "" {
			if rpc.serviceRE, err = fullMatch(svc); err != nil {
				return nil, fmt.Errorf("method: service: %w", err)
			}
		}
		if method != "" {
			if rpc.methodRE, err = fullMatch(method); err != nil {
				return nil, fmt.Errorf("method: method: %w", err)
			}
		}
	default:
		return nil, fmt.Errorf("method: type %q is not Exact or RegularExpression", typ)
	}
	return rpc, nil
}

func (m *rpcMatch) matches(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	svc, method, ok := strings.Cut(p[1:], "/")
	if !ok || svc == "" || method == "" || strings.IndexByte(method, '/') >= 0 {
		return false
	}
	return part(svc, m.service, m.serviceRE) && part(method, m.method, m.methodRE)
}

func part(s, exact string, re *regexp.Regexp) bool {
	switch {
	case re != nil:
		return re.MatchString(s)
	case exact != "":
		return s == exact
	}
	return true
}
