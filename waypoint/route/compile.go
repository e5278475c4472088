package route

import (
	"errors"
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Limits of the HTTPRoute CRD, enforced again for objects that did not pass an
// API server (local mode).
const (
	maxRules        = 16
	maxMatches      = 64
	maxRouteMatches = 128
	maxFilters      = 16
	maxBackends     = 16
	maxValueMatches = 16
	maxWeight       = 1000000
	maxPathValue    = 1024
)

// problem is why a route is not accepted: a Gateway API reason and a message.
type problem struct {
	reason gatewayv1.RouteConditionReason
	msg    string
}

func (p *problem) Error() string { return p.msg }

func unsupported(format string, a ...any) error {
	return &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf(format, a...)}
}

func incompatible(format string, a ...any) error {
	return &problem{gatewayv1.RouteReasonIncompatibleFilters, fmt.Sprintf(format, a...)}
}

// refProblem is why a backendRef does not resolve.
type refProblem struct {
	reason gatewayv1.RouteConditionReason
	msg    string
}

func (p *refProblem) Error() string { return p.msg }

// Grants are the ReferenceGrants that permit cross-namespace backendRefs.
type Grants []*gatewayv1.ReferenceGrant

func (g Grants) permit(fromKind, fromNS, toNS, toName string) bool {
	for _, rg := range g {
		if rg == nil || rg.Namespace != toNS {
			continue
		}
		from := slices.ContainsFunc(rg.Spec.From, func(f gatewayv1.ReferenceGrantFrom) bool {
			return f.Group == gatewayv1.GroupName && string(f.Kind) == fromKind && string(f.Namespace) == fromNS
		})
		to := slices.ContainsFunc(rg.Spec.To, func(t gatewayv1.ReferenceGrantTo) bool {
			return isCore(string(t.Group)) && t.Kind == "Service" && (t.Name == nil || string(*t.Name) == toName)
		})
		if from && to {
			return true
		}
	}
	return false
}

func isCore(group string) bool { return group == "" || group == "core" }

// Route kinds, as in Status.Kind and Rule.Kind.
const (
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
)

// source is a route of either kind as compiling sees it. A GRPCRoute rule's
// filters and backendRefs have the HTTPRoute schema, so they are carried as an
// HTTPRouteRule and compiled by the same code; only its matches differ.
type source struct {
	kind            string
	namespace, name string
	generation      int64
	created         time.Time
	parents         []gatewayv1.ParentReference
	rules           []sourceRule
}

type sourceRule struct {
	rule *gatewayv1.HTTPRouteRule
	// grpc is set for a GRPCRoute rule: its matches (rule.Matches is empty)
	// and, when the rule cannot be converted, why.
	grpc *grpcRule
}

func httpSource(hr *gatewayv1.HTTPRoute) *source {
	src := &source{kind: KindHTTPRoute, namespace: hr.Namespace, name: hr.Name, generation: hr.Generation,
		created: hr.CreationTimestamp.Time, parents: hr.Spec.ParentRefs}
	for i := range hr.Spec.Rules {
		src.rules = append(src.rules, sourceRule{rule: &hr.Spec.Rules[i]})
	}
	return src
}

// older says whether s takes precedence over o in a conflict: the older route,
// then "namespace/name" in alphabetical order, then the kind.
func (s *source) older(o *source) bool {
	if !s.created.Equal(o.created) {
		return s.created.Before(o.created)
	}
	if a, b := s.namespace+"/"+s.name, o.namespace+"/"+o.name; a != b {
		return a < b
	}
	return s.kind < o.kind
}

// attachment is a route's entries for one Service port, before the HTTPRoute
// and GRPCRoute conflicts of that port are settled.
type attachment struct {
	key     parentKey
	src     *source
	status  int // index in the statuses
	parent  int // index in that status's Parents
	entries []entry
}

// Compile builds the table from every HTTPRoute and GRPCRoute (all
// namespaces). A route that is invalid, or whose parent cannot take it, gets
// Accepted=False in its status and adds nothing; a backendRef that does not
// resolve gets ResolvedRefs=False and answers 500 for its share. A Service port
// takes routes of one kind: where HTTPRoutes and GRPCRoutes attach to the same
// port, the kind of the oldest route wins it (docs/waypoint-routing.md).
// grants permits cross-namespace backendRefs; svcs resolves parents and
// backends. Compile never panics on bad input.
func Compile(routes []*gatewayv1.HTTPRoute, grpcRoutes []*gatewayv1.GRPCRoute, svcs Services, grants Grants) (*Table, []Status) {
	if svcs == nil {
		svcs = func(string, string) (ServiceInfo, bool) { return ServiceInfo{}, false }
	}
	var srcs []*source
	for _, hr := range routes {
		if hr != nil {
			srcs = append(srcs, httpSource(hr))
		}
	}
	for _, gr := range grpcRoutes {
		if gr != nil {
			srcs = append(srcs, grpcSource(gr))
		}
	}
	var statuses []Status
	var atts []attachment
	for _, src := range srcs {
		st, as, ok := compileRoute(src, svcs, grants)
		if !ok {
			continue
		}
		for i := range as {
			as[i].status = len(statuses)
		}
		statuses = append(statuses, st)
		atts = append(atts, as...)
	}
	t := &Table{parents: map[parentKey]*Routes{}}
	attach(t, atts, statuses)
	for _, rs := range t.parents {
		slices.SortStableFunc(rs.entries, func(a, b entry) int {
			switch {
			case a.before(&b):
				return -1
			case b.before(&a):
				return 1
			}
			return 0
		})
	}
	return t, statuses
}

// attach adds the attachments to t. On a port with both kinds, the routes of
// the kind of the oldest route there attach and the others do not (GEP-1016,
// with the Service port as the listener): a parentRef that loses every port is
// Accepted=False (NotAllowedByListeners), one that loses some says which.
func attach(t *Table, atts []attachment, statuses []Status) {
	winner := map[parentKey]*source{}
	for _, a := range atts {
		if w := winner[a.key]; w == nil || a.src.older(w) {
			winner[a.key] = a.src
		}
	}
	type parentRef struct{ status, parent int }
	total := map[parentRef]int{}
	lost := map[parentRef][]string{}
	for _, a := range atts {
		pr := parentRef{a.status, a.parent}
		total[pr]++
		if w := winner[a.key]; w.kind != a.src.kind {
			lost[pr] = append(lost[pr], fmt.Sprintf("port %d, taken by %s %s/%s", a.key.port, w.kind, w.namespace, w.name))
			continue
		}
		rs := t.parents[a.key]
		if rs == nil {
			rs = &Routes{}
			t.parents[a.key] = rs
		}
		rs.entries = append(rs.entries, a.entries...)
	}
	for pr, l := range lost {
		ps := &statuses[pr.status].Parents[pr.parent]
		msg := "a Service port takes HTTPRoutes or GRPCRoutes, not both, and the oldest route decides; not attached to " + strings.Join(l, "; ")
		if len(l) < total[pr] {
			ps.Conditions[0].Message = "attached to the Service, except where " + msg
			continue
		}
		ps.Conditions[0].Status = metav1.ConditionFalse
		ps.Conditions[0].Reason = string(gatewayv1.RouteReasonNotAllowedByListeners)
		ps.Conditions[0].Message = msg
	}
}

// compileRoute compiles src and resolves its Service parentRefs to ports; ok is
// false when src has no Service parent.
func compileRoute(src *source, svcs Services, grants Grants) (Status, []attachment, bool) {
	st := Status{Kind: src.kind, Namespace: src.namespace, Name: src.name, Generation: src.generation}
	rules, entries, err := compileRules(src, svcs, grants)
	refsOK, refsReason, refsMsg := true, gatewayv1.RouteReasonResolvedRefs, "all references resolved"
	for _, r := range rules {
		for _, b := range append(r.Backends[:len(r.Backends):len(r.Backends)], mirrorBackends(r)...) {
			var rp *refProblem
			if errors.As(b.Invalid, &rp) && refsOK {
				refsOK, refsReason, refsMsg = false, rp.reason, rp.msg
			}
		}
	}
	var atts []attachment
	seen := map[parentKey]bool{}
	for _, pr := range src.parents {
		if !isServiceRef(pr.Group, pr.Kind, false) {
			continue
		}
		ok, reason, msg := true, gatewayv1.RouteReasonAccepted, "attached to the Service"
		var ports []uint16
		if err != nil {
			ok, reason, msg = false, gatewayv1.RouteReasonUnsupportedValue, err.Error()
			if p := (*problem)(nil); errors.As(err, &p) {
				reason = p.reason
			}
		} else {
			ports, ok, reason, msg = parentPorts(src, pr, svcs)
		}
		if ok {
			for _, port := range ports {
				k := parentKey{src.namespace, string(pr.Name), port}
				if seen[k] {
					continue
				}
				seen[k] = true
				atts = append(atts, attachment{key: k, src: src, parent: len(st.Parents), entries: entries})
			}
		}
		st.Parents = append(st.Parents, gatewayv1.RouteParentStatus{
			ParentRef: pr,
			Conditions: []metav1.Condition{
				condition(gatewayv1.RouteConditionAccepted, ok, reason, msg, src.generation),
				condition(gatewayv1.RouteConditionResolvedRefs, refsOK, refsReason, refsMsg, src.generation),
			},
		})
	}
	return st, atts, len(st.Parents) > 0
}

func mirrorBackends(r *Rule) []Backend {
	var bs []Backend
	for _, m := range r.Mirrors {
		bs = append(bs, m.Backend)
	}
	return bs
}

// isServiceRef says whether group/kind name a core Service. For a parentRef the
// group defaults to gateway.networking.k8s.io and the kind to Gateway; for a
// backendRef to the core group and Service.
func isServiceRef(group *gatewayv1.Group, kind *gatewayv1.Kind, backend bool) bool {
	g, k := "", "Service"
	if !backend {
		g, k = gatewayv1.GroupName, "Gateway"
	}
	if group != nil {
		g = string(*group)
	}
	if kind != nil {
		k = string(*kind)
	}
	return isCore(g) && k == "Service"
}

// parentPorts resolves a Service parentRef to the ports the route attaches to.
func parentPorts(src *source, pr gatewayv1.ParentReference, svcs Services) ([]uint16, bool, gatewayv1.RouteConditionReason, string) {
	ns := src.namespace
	if pr.Namespace != nil && string(*pr.Namespace) != ns {
		// Consumer routes (GAMMA): Istio ambient does not implement them either;
		// saying so beats applying the route to every client of the Service.
		return nil, false, gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf(
			"consumer routes are not supported: the route is in namespace %q, Service %s/%s is not; put the route in the Service's namespace",
			ns, string(*pr.Namespace), pr.Name)
	}
	svc, found := svcs(ns, string(pr.Name))
	if !found {
		return nil, false, gatewayv1.RouteReasonNoMatchingParent, fmt.Sprintf("Service %s/%s not found", ns, pr.Name)
	}
	var ports []uint16
	for _, p := range svc.Ports {
		if pr.Port != nil && int32(p.Port) != *pr.Port {
			continue
		}
		if pr.SectionName != nil && p.Name != string(*pr.SectionName) {
			continue
		}
		ports = append(ports, p.Port)
	}
	if len(ports) == 0 {
		want := "any port"
		switch {
		case pr.Port != nil && pr.SectionName != nil:
			want = fmt.Sprintf("port %d named %q", *pr.Port, *pr.SectionName)
		case pr.Port != nil:
			want = fmt.Sprintf("port %d", *pr.Port)
		case pr.SectionName != nil:
			want = fmt.Sprintf("a port named %q", *pr.SectionName)
		}
		return nil, false, gatewayv1.RouteReasonNoMatchingParent, fmt.Sprintf("Service %s/%s has no %s", ns, pr.Name, want)
	}
	return ports, true, gatewayv1.RouteReasonAccepted, "attached to the Service"
}

// compileRules validates src like the CRD's schema and CEL rules would and
// compiles its rules; the error is a *problem.
func compileRules(src *source, svcs Services, grants Grants) ([]*Rule, []entry, error) {
	specRules := src.rules
	if len(specRules) == 0 {
		specRules = []sourceRule{{rule: &gatewayv1.HTTPRouteRule{}}}
		if src.kind == KindGRPCRoute {
			specRules[0].grpc = &grpcRule{}
		}
	}
	if len(specRules) > maxRules {
		return nil, nil, unsupported("%d rules, at most %d are allowed", len(specRules), maxRules)
	}
	routeName := src.namespace + "/" + src.name
	names := map[string]bool{}
	total := 0
	var rules []*Rule
	var entries []entry
	for i := range specRules {
		sr, g := specRules[i].rule, specRules[i].grpc
		where := fmt.Sprintf("rules[%d]", i)
		if sr.Name != nil {
			where = fmt.Sprintf("rule %q", *sr.Name)
			if names[string(*sr.Name)] {
				return nil, nil, unsupported("%s: rule names must be unique within the route", where)
			}
			names[string(*sr.Name)] = true
		}
		matches := sr.Matches
		n := len(matches)
		if g != nil {
			if g.invalid != nil {
				return nil, nil, &problem{gatewayv1.RouteReasonUnsupportedValue, where + ": " + g.invalid.Error()}
			}
			n = len(g.matches)
		}
		if n == 0 {
			n = 1
			if g == nil {
				matches = []gatewayv1.HTTPRouteMatch{{}}
			}
		}
		total += n
		if n > maxMatches || total > maxRouteMatches {
			return nil, nil, unsupported("%s: too many matches (at most %d per rule, %d per route)", where, maxMatches, maxRouteMatches)
		}
		r, err := compileRule(src, sr, matches, svcs, grants)
		if err != nil {
			reason := gatewayv1.RouteReasonUnsupportedValue
			if p := (*problem)(nil); errors.As(err, &p) {
				reason = p.reason
			}
			return nil, nil, &problem{reason, where + ": " + err.Error()}
		}
		r.Kind, r.Route, r.Index = src.kind, routeName, i
		for j := range n {
			var e entry
			var err error
			if g != nil {
				e, err = g.compileMatch(j)
			} else {
				e, err = compileMatch(&matches[j])
			}
			if err != nil {
				return nil, nil, unsupported("%s: matches[%d]: %v", where, j, err)
			}
			e.rule, e.created, e.route, e.ruleIdx, e.matchIdx = r, src.created, routeName, i, j
			entries = append(entries, e)
		}
		rules = append(rules, r)
	}
	return rules, entries, nil
}

func compileRule(src *source, sr *gatewayv1.HTTPRouteRule, matches []gatewayv1.HTTPRouteMatch, svcs Services, grants Grants) (*Rule, error) {
	r := &Rule{Filters: slices.Clone(sr.Filters)}
	if sr.Name != nil {
		r.Name = string(*sr.Name)
	}
	if sr.SessionPersistence != nil {
		return nil, unsupported("sessionPersistence is not supported")
	}
	if len(sr.BackendRefs) > maxBackends {
		return nil, unsupported("%d backendRefs, at most %d are allowed", len(sr.BackendRefs), maxBackends)
	}
	if err := compileFilters(r, src, sr.Filters, matches, svcs, grants); err != nil {
		return nil, err
	}
	if len(sr.BackendRefs) > 0 && slices.ContainsFunc(r.request, func(f requestFilter) bool { return f.kind == filterRedirect }) {
		return nil, incompatible("RequestRedirect must not be used together with backendRefs")
	}
	var err error
	if r.Timeouts, err = compileTimeouts(sr.Timeouts); err != nil {
		return nil, err
	}
	if r.Retry, err = compileRetry(sr.Retry); err != nil {
		return nil, err
	}
	for i := range sr.BackendRefs {
		br := &sr.BackendRefs[i]
		b := resolveBackend(src, br.BackendObjectReference, svcs, grants)
		b.Weight = 1
		if br.Weight != nil {
			if *br.Weight < 0 || *br.Weight > maxWeight {
				return nil, unsupported("backendRefs[%d]: weight %d is outside 0..%d", i, *br.Weight, maxWeight)
			}
			b.Weight = *br.Weight
		}
		if err := backendFilters(&b, br.Filters); err != nil {
			return nil, fmt.Errorf("backendRefs[%d]: %w", i, err)
		}
		r.total += uint64(b.Weight)
		r.Backends = append(r.Backends, b)
	}
	return r, nil
}

// resolveBackend resolves a backend reference; Invalid is a *refProblem.
func resolveBackend(src *source, ref gatewayv1.BackendObjectReference, svcs Services, grants Grants) Backend {
	b := Backend{Namespace: src.namespace, Name: string(ref.Name)}
	if ref.Namespace != nil {
		b.Namespace = string(*ref.Namespace)
	}
	if ref.Port != nil && *ref.Port > 0 && *ref.Port <= 65535 {
		b.Port = uint16(*ref.Port)
	}
	ref1 := b.Namespace + "/" + b.Name
	switch {
	case !isServiceRef(ref.Group, ref.Kind, true):
		g, k := "", "Service"
		if ref.Group != nil {
			g = string(*ref.Group)
		}
		if ref.Kind != nil {
			k = string(*ref.Kind)
		}
		b.Invalid = &refProblem{gatewayv1.RouteReasonInvalidKind, fmt.Sprintf("backendRef %s: kind %q of group %q is not supported, only core Services", ref1, k, g)}
	case b.Namespace != src.namespace && !grants.permit(src.kind, src.namespace, b.Namespace, b.Name):
		b.Invalid = &refProblem{gatewayv1.RouteReasonRefNotPermitted, fmt.Sprintf("backendRef %s: no ReferenceGrant in namespace %q allows %ss of namespace %q to reference it", ref1, b.Namespace, src.kind, src.namespace)}
	case ref.Port == nil:
		b.Invalid = &refProblem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef %s: a port is required for a Service", ref1)}
	default:
		svc, ok := svcs(b.Namespace, b.Name)
		if !ok {
			b.Invalid = &refProblem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef %s: Service not found", ref1)}
		} else if !slices.ContainsFunc(svc.Ports, func(p ServicePort) bool { return int32(p.Port) == *ref.Port }) {
			b.Invalid = &refProblem{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef %s: Service has no port %d", ref1, *ref.Port)}
		}
	}
	return b
}

func backendFilters(b *Backend, fs []gatewayv1.HTTPRouteFilter) error {
	_, err := forFilters(fs, func(f *gatewayv1.HTTPRouteFilter) error {
		var err error
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			b.request, err = compileHeaderFilter(f.RequestHeaderModifier)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			b.response, err = compileHeaderFilter(f.ResponseHeaderModifier)
		default:
			err = unsupported("%s filter is not supported on a backendRef, only header modifiers are", f.Type)
		}
		return err
	})
	return err
}

// forFilters checks the number, the shape and the repetition of filters and
// calls fn on each in order; it returns the types seen.
func forFilters(fs []gatewayv1.HTTPRouteFilter, fn func(*gatewayv1.HTTPRouteFilter) error) (map[gatewayv1.HTTPRouteFilterType]bool, error) {
	if len(fs) > maxFilters {
		return nil, unsupported("%d filters, at most %d are allowed", len(fs), maxFilters)
	}
	seen := map[gatewayv1.HTTPRouteFilterType]bool{}
	for i := range fs {
		f := &fs[i]
		if err := filterShape(f); err != nil {
			return nil, fmt.Errorf("filters[%d]: %w", i, err)
		}
		if seen[f.Type] && f.Type != gatewayv1.HTTPRouteFilterRequestMirror {
			return nil, incompatible("filters[%d]: %s filter cannot be repeated", i, f.Type)
		}
		seen[f.Type] = true
		if err := fn(f); err != nil {
			return nil, fmt.Errorf("filters[%d]: %w", i, err)
		}
	}
	return seen, nil
}

// filterShape checks that exactly the field named by Type is set.
func filterShape(f *gatewayv1.HTTPRouteFilter) error {
	set := map[gatewayv1.HTTPRouteFilterType]bool{
		gatewayv1.HTTPRouteFilterRequestHeaderModifier:  f.RequestHeaderModifier != nil,
		gatewayv1.HTTPRouteFilterResponseHeaderModifier: f.ResponseHeaderModifier != nil,
		gatewayv1.HTTPRouteFilterRequestMirror:          f.RequestMirror != nil,
		gatewayv1.HTTPRouteFilterRequestRedirect:        f.RequestRedirect != nil,
		gatewayv1.HTTPRouteFilterURLRewrite:             f.URLRewrite != nil,
		gatewayv1.HTTPRouteFilterCORS:                   f.CORS != nil,
		gatewayv1.HTTPRouteFilterExternalAuth:           f.ExternalAuth != nil,
		gatewayv1.HTTPRouteFilterExtensionRef:           f.ExtensionRef != nil,
	}
	if _, known := set[f.Type]; !known {
		return unsupported("unknown filter type %q", f.Type)
	}
	for t, has := range set {
		if has != (t == f.Type) {
			if has {
				return unsupported("filter of type %s must not set %s", f.Type, t)
			}
			return unsupported("filter of type %s must set its %s field", f.Type, t)
		}
	}
	return nil
}

func compileFilters(r *Rule, src *source, fs []gatewayv1.HTTPRouteFilter, matches []gatewayv1.HTTPRouteMatch, svcs Services, grants Grants) error {
	seen, err := forFilters(fs, func(f *gatewayv1.HTTPRouteFilter) error {
		var err error
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			var hf headerFilter
			hf, err = compileHeaderFilter(f.RequestHeaderModifier)
			r.request = append(r.request, requestFilter{kind: filterHeaders, headers: hf})
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			var hf headerFilter
			hf, err = compileHeaderFilter(f.ResponseHeaderModifier)
			r.response = append(r.response, hf)
		case gatewayv1.HTTPRouteFilterURLRewrite:
			rf := requestFilter{kind: filterRewrite}
			if f.URLRewrite.Hostname != nil {
				rf.hostname, err = validHostname(string(*f.URLRewrite.Hostname))
			}
			if err == nil {
				rf.path, err = compilePathModifier(r, f.URLRewrite.Path, matches)
			}
			r.request = append(r.request, rf)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			var rf requestFilter
			rf, err = compileRedirect(r, f.RequestRedirect, matches)
			r.request = append(r.request, rf)
		case gatewayv1.HTTPRouteFilterRequestMirror:
			var m Mirror
			m, err = compileMirror(src, f.RequestMirror, svcs, grants)
			r.Mirrors = append(r.Mirrors, m)
		default:
			err = unsupported("%s filter is not supported", f.Type)
		}
		return err
	})
	if err != nil {
		return err
	}
	if seen[gatewayv1.HTTPRouteFilterRequestRedirect] && seen[gatewayv1.HTTPRouteFilterURLRewrite] {
		return incompatible("RequestRedirect and URLRewrite filters cannot be combined")
	}
	return nil
}

var headerName = regexp.MustCompile(`^[A-Za-z0-9!#$%&'*+\-.^_` + "`" + `|~]{1,256}$`)

func compileHeaderFilter(f *gatewayv1.HTTPHeaderFilter) (headerFilter, error) {
	var hf headerFilter
	if len(f.Set) > maxValueMatches || len(f.Add) > maxValueMatches || len(f.Remove) > maxValueMatches {
		return hf, unsupported("at most %d headers each in set, add and remove", maxValueMatches)
	}
	list := func(op string, hs []gatewayv1.HTTPHeader) ([]header, error) {
		var out []header
		for _, h := range hs {
			if !headerName.MatchString(string(h.Name)) {
				return nil, unsupported("%s: invalid header name %q", op, h.Name)
			}
			if strings.ContainsAny(h.Value, "\r\n\x00") {
				return nil, unsupported("%s: header %s: value contains CR, LF or NUL", op, h.Name)
			}
			n := textproto.CanonicalMIMEHeaderKey(string(h.Name))
			if slices.ContainsFunc(out, func(o header) bool { return o.name == n }) {
				return nil, unsupported("%s: header %s given twice", op, h.Name)
			}
			out = append(out, header{n, h.Value})
		}
		return out, nil
	}
	var err error
	if hf.set, err = list("set", f.Set); err != nil {
		return hf, err
	}
	if hf.add, err = list("add", f.Add); err != nil {
		return hf, err
	}
	for _, n := range f.Remove {
		if !headerName.MatchString(n) {
			return hf, unsupported("remove: invalid header name %q", n)
		}
		hf.remove = append(hf.remove, textproto.CanonicalMIMEHeaderKey(n))
	}
	return hf, nil
}

var preciseHostname = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

func validHostname(h string) (string, error) {
	if len(h) > 253 || !preciseHostname.MatchString(h) {
		return "", unsupported("invalid hostname %q", h)
	}
	return h, nil
}

// compilePathModifier checks a rewrite or redirect path; ReplacePrefixMatch
// needs the rule's single PathPrefix match, whose value it records.
func compilePathModifier(r *Rule, m *gatewayv1.HTTPPathModifier, matches []gatewayv1.HTTPRouteMatch) (pathModifier, error) {
	if m == nil {
		return pathModifier{}, nil
	}
	switch m.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if m.ReplaceFullPath == nil || m.ReplacePrefixMatch != nil {
			return pathModifier{}, unsupported("path: ReplaceFullPath needs replaceFullPath and only it")
		}
		v := *m.ReplaceFullPath
		if err := replacementPath(v, false); err != nil {
			return pathModifier{}, err
		}
		return pathModifier{kind: pathFull, value: v}, nil
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if m.ReplacePrefixMatch == nil || m.ReplaceFullPath != nil {
			return pathModifier{}, unsupported("path: ReplacePrefixMatch needs replacePrefixMatch and only it")
		}
		v := *m.ReplacePrefixMatch
		if err := replacementPath(v, true); err != nil {
			return pathModifier{}, err
		}
		if len(matches) != 1 || pathType(matches[0].Path) != gatewayv1.PathMatchPathPrefix {
			return pathModifier{}, unsupported("path: ReplacePrefixMatch needs exactly one PathPrefix match in the rule")
		}
		e, err := compileMatch(&matches[0])
		if err != nil {
			return pathModifier{}, unsupported("%v", err)
		}
		r.prefix = e.path
		return pathModifier{kind: pathPrefix, value: v}, nil
	}
	return pathModifier{}, unsupported("path: unknown modifier type %q", m.Type)
}

// replacementPath requires a rewritten path to be already normalized, so the
// forwarded path stays the one authorization saw the shape of.
func replacementPath(v string, prefix bool) error {
	if prefix && v == "" {
		return nil
	}
	if len(v) > maxPathValue {
		return unsupported("path: longer than %d characters", maxPathValue)
	}
	n, err := NormalizePath(v)
	if err != nil || n != v || strings.ContainsAny(v, "?#") {
		return unsupported("path: %q is not a normalized absolute path", v)
	}
	return nil
}

func compileRedirect(r *Rule, f *gatewayv1.HTTPRequestRedirectFilter, matches []gatewayv1.HTTPRouteMatch) (requestFilter, error) {
	rf := requestFilter{kind: filterRedirect, code: 302}
	if f.Scheme != nil {
		if *f.Scheme != "http" && *f.Scheme != "https" {
			return rf, unsupported("requestRedirect: scheme %q is not http or https", *f.Scheme)
		}
		rf.scheme = *f.Scheme
	}
	var err error
	if f.Hostname != nil {
		if rf.hostname, err = validHostname(string(*f.Hostname)); err != nil {
			return rf, err
		}
	}
	if f.Port != nil {
		if *f.Port < 1 || *f.Port > 65535 {
			return rf, unsupported("requestRedirect: port %d is outside 1..65535", *f.Port)
		}
		rf.port = uint16(*f.Port)
	}
	if f.StatusCode != nil {
		switch *f.StatusCode {
		case 301, 302, 303, 307, 308:
			rf.code = *f.StatusCode
		default:
			return rf, unsupported("requestRedirect: statusCode %d is not 301, 302, 303, 307 or 308", *f.StatusCode)
		}
	}
	rf.path, err = compilePathModifier(r, f.Path, matches)
	return rf, err
}

func compileMirror(src *source, f *gatewayv1.HTTPRequestMirrorFilter, svcs Services, grants Grants) (Mirror, error) {
	m := Mirror{Backend: resolveBackend(src, f.BackendRef, svcs, grants), Numerator: 100, Denominator: 100}
	switch {
	case f.Percent != nil && f.Fraction != nil:
		return m, unsupported("requestMirror: only one of percent or fraction may be set")
	case f.Percent != nil:
		if *f.Percent < 0 || *f.Percent > 100 {
			return m, unsupported("requestMirror: percent %d is outside 0..100", *f.Percent)
		}
		m.Numerator = *f.Percent
	case f.Fraction != nil:
		m.Numerator = f.Fraction.Numerator
		if f.Fraction.Denominator != nil {
			m.Denominator = *f.Fraction.Denominator
		}
		if m.Numerator < 0 || m.Denominator < 1 || m.Numerator > m.Denominator {
			return m, unsupported("requestMirror: fraction %d/%d is not between 0 and 1", m.Numerator, m.Denominator)
		}
	}
	return m, nil
}

var gepDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

func parseDuration(field string, d *gatewayv1.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if !gepDuration.MatchString(string(*d)) {
		return 0, unsupported("%s: %q is not a Gateway API duration (GEP-2257)", field, *d)
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil {
		return 0, unsupported("%s: %v", field, err)
	}
	return v, nil
}

func compileTimeouts(t *gatewayv1.HTTPRouteTimeouts) (Timeouts, error) {
	var out Timeouts
	if t == nil {
		return out, nil
	}
	var err error
	if out.Request, err = parseDuration("timeouts.request", t.Request); err != nil {
		return out, err
	}
	if out.BackendRequest, err = parseDuration("timeouts.backendRequest", t.BackendRequest); err != nil {
		return out, err
	}
	if out.Request != 0 && out.BackendRequest > out.Request {
		return out, unsupported("timeouts: backendRequest %v is longer than request %v", out.BackendRequest, out.Request)
	}
	return out, nil
}

func compileRetry(r *gatewayv1.HTTPRouteRetry) (*Retry, error) {
	if r == nil {
		return nil, nil
	}
	out := &Retry{Attempts: -1}
	if r.Attempts != nil {
		if *r.Attempts < 0 {
			return nil, unsupported("retry: attempts %d is negative", *r.Attempts)
		}
		out.Attempts = *r.Attempts
	}
	for _, c := range r.Codes {
		if c < 400 || c > 599 {
			return nil, unsupported("retry: code %d is outside 400..599", c)
		}
		out.Codes = append(out.Codes, int(c))
	}
	var err error
	if out.Backoff, err = parseDuration("retry.backoff", r.Backoff); err != nil {
		return nil, err
	}
	return out, nil
}

func pathType(p *gatewayv1.HTTPPathMatch) gatewayv1.PathMatchType {
	if p == nil || p.Type == nil {
		return gatewayv1.PathMatchPathPrefix
	}
	return *p.Type
}

var pathValueChars = regexp.MustCompile(`^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$`)

var methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// compileMatch validates one HTTPRouteMatch (the CEL rules of HTTPPathMatch)
// and compiles it; errors are plain, the caller wraps them.
func compileMatch(m *gatewayv1.HTTPRouteMatch) (entry, error) {
	var e entry
	value := "/"
	if m.Path != nil && m.Path.Value != nil {
		value = *m.Path.Value
	}
	if len(value) > maxPathValue {
		return e, fmt.Errorf("path: longer than %d characters", maxPathValue)
	}
	switch t := pathType(m.Path); t {
	case gatewayv1.PathMatchExact, gatewayv1.PathMatchPathPrefix:
		if err := checkPathValue(value); err != nil {
			return e, err
		}
		n, err := NormalizePath(value)
		if err != nil {
			return e, fmt.Errorf("path: %w", err)
		}
		e.kind, e.path, e.pathLen = matchExact, n, len(n)
		if t == gatewayv1.PathMatchPathPrefix {
			e.kind, e.path = matchPrefix, strings.TrimSuffix(n, "/")
		}
	case gatewayv1.PathMatchRegularExpression:
		re, err := fullMatch(value)
		if err != nil {
			return e, fmt.Errorf("path: %w", err)
		}
		e.kind, e.re, e.pathLen = matchRegex, re, len(value)
	default:
		return e, fmt.Errorf("path: type %q is not Exact, PathPrefix or RegularExpression", t)
	}
	if m.Method != nil {
		if !slices.Contains(methods, string(*m.Method)) {
			return e, fmt.Errorf("method %q is not supported", *m.Method)
		}
		e.method = string(*m.Method)
	}
	var err error
	if e.header, err = valueMatches("headers", m.Headers, true); err != nil {
		return e, err
	}
	qs := make([]gatewayv1.HTTPHeaderMatch, len(m.QueryParams))
	for i, q := range m.QueryParams {
		qs[i] = gatewayv1.HTTPHeaderMatch{Type: (*gatewayv1.HeaderMatchType)(q.Type), Name: q.Name, Value: q.Value}
	}
	e.query, err = valueMatches("queryParams", qs, false)
	return e, err
}

func checkPathValue(v string) error {
	switch {
	case !strings.HasPrefix(v, "/"):
		return errors.New("path: must start with '/'")
	case strings.Contains(v, "//"):
		return errors.New("path: must not contain '//'")
	case strings.Contains(v, "/./"), strings.HasSuffix(v, "/."):
		return errors.New("path: must not contain a '.' segment")
	case strings.Contains(v, "/../"), strings.HasSuffix(v, "/.."):
		return errors.New("path: must not contain a '..' segment")
	case strings.Contains(v, "%2f"), strings.Contains(v, "%2F"), strings.Contains(v, "#"):
		return errors.New("path: must not contain '%2f' or '#'")
	case !pathValueChars.MatchString(v):
		return fmt.Errorf("path: %q has characters outside [-A-Za-z0-9/._~!$&'()*+,;=:@] and %%HH", v)
	}
	return nil
}

// valueMatches compiles header (canonical names, case-insensitive) or query
// (case-sensitive names) matches; of two entries with the same name only the
// first counts, as the specification says.
func valueMatches(field string, ms []gatewayv1.HTTPHeaderMatch, isHeader bool) ([]valueMatch, error) {
	if len(ms) > maxValueMatches {
		return nil, fmt.Errorf("%s: at most %d", field, maxValueMatches)
	}
	maxLen := 1024
	if isHeader {
		maxLen = 4096
	}
	var out []valueMatch
	for _, m := range ms {
		if !headerName.MatchString(string(m.Name)) {
			return nil, fmt.Errorf("%s: invalid name %q", field, m.Name)
		}
		if m.Value == "" || len(m.Value) > maxLen {
			return nil, fmt.Errorf("%s: %s: the value must have 1 to %d characters", field, m.Name, maxLen)
		}
		v := valueMatch{name: string(m.Name), value: m.Value}
		if isHeader {
			v.name = textproto.CanonicalMIMEHeaderKey(v.name)
			v.host = v.name == "Host"
		}
		if slices.ContainsFunc(out, func(o valueMatch) bool { return o.name == v.name }) {
			continue
		}
		switch {
		case m.Type == nil || *m.Type == gatewayv1.HeaderMatchExact:
		case *m.Type == gatewayv1.HeaderMatchRegularExpression:
			re, err := fullMatch(m.Value)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", field, m.Name, err)
			}
			v.re = re
		default:
			return nil, fmt.Errorf("%s: %s: type %q is not Exact or RegularExpression", field, m.Name, *m.Type)
		}
		out = append(out, v)
	}
	return out, nil
}

// fullMatch compiles an RE2 expression that must match the whole value, as
// Envoy's safe_regex does.
func fullMatch(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("invalid regular expression: %w", err)
	}
	return regexp.Compile(`^(?:` + expr + `)$`)
}
