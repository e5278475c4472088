package upstream

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/internal/fielderr"
)

// DefaultRootNamespace is Istio's config root namespace, whose exported
// DestinationRules apply mesh-wide.
const DefaultRootNamespace = "istio-system"

// Options are what Compile needs beyond the DestinationRules.
type Options struct {
	// DomainSuffix completes short host names: "reviews" in namespace "default"
	// is "reviews.default.svc.<DomainSuffix>" (default cluster.local).
	DomainSuffix string
	// RootNamespace is searched last (default istio-system).
	RootNamespace string
	// Namespace is the waypoint's own namespace, searched first as Istio searches
	// the client proxy's; empty means the Service's namespace (a waypoint serving
	// its own namespace).
	Namespace string
	// LocalityDisabled turns locality load balancing off where a DestinationRule
	// does not set it (the mesh's localityLbSetting.enabled: false).
	LocalityDisabled bool
}

// Problems are what Compile found in the DestinationRules.
type Problems struct {
	// Errors has one *RuleError per DestinationRule left out because a field is
	// invalid; the other rules still apply.
	Errors []error
	// Warnings are about valid fields the waypoint does not apply, and rules it
	// skips by design; the rest of each rule applies.
	Warnings []string
}

// RuleError is an invalid DestinationRule: its fields' problems.
type RuleError struct {
	Namespace, Name string
	Fields          fielderr.List
}

func (e *RuleError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "DestinationRule %s/%s: ", e.Namespace, e.Name)
	for i, f := range e.Fields {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Error())
	}
	return b.String()
}

// Unwrap gives the field errors (fielderr.All reaches them).
func (e *RuleError) Unwrap() []error {
	out := make([]error, len(e.Fields))
	for i, f := range e.Fields {
		out[i] = f
	}
	return out
}

// Policies are the compiled DestinationRules of a snapshot. For is safe for
// concurrent use; a Policies never changes (compile a new one per snapshot).
type Policies struct {
	opts  Options
	byNS  map[string][]*rule // oldest first
	cache sync.Map           // policyKey -> *Policy
}

type policyKey struct {
	hostname, namespace string
	port                uint16
	distribution        string // ForService's trafficDistribution
}

// rule is one valid DestinationRule.
type rule struct {
	namespace, name string
	created         time.Time
	host            string // resolved: a FQDN, or a wildcard ("*", "*.suffix")
	export          exportSet
	tp              *trafficPolicy // nil: none
	subsets         []subsetRule
}

type subsetRule struct {
	name   string
	labels map[string]string
	tp     *trafficPolicy
}

// exportSet is a rule's exportTo; empty exports to all (Istio's default).
type exportSet struct {
	all, private bool
	namespaces   []string
}

// visibleTo says whether a rule declared in ns applies to a client in client.
func (e exportSet) visibleTo(ns, client string) bool {
	return e.all || e.private && ns == client || slices.Contains(e.namespaces, client)
}

// Compile validates and indexes DestinationRules. A rule with an invalid field
// is left out whole (Problems.Errors names it and the field); a rule with a
// workloadSelector is left out with a warning (Istio applies those only to
// sidecars' outbound traffic, never at a waypoint). Compile never panics on bad
// input and its result is never nil.
func Compile(drs []*networkingv1.DestinationRule, opts Options) (*Policies, Problems) {
	opts.DomainSuffix = cmp.Or(opts.DomainSuffix, discovery.DefaultDomainSuffix)
	opts.RootNamespace = cmp.Or(opts.RootNamespace, DefaultRootNamespace)
	p := &Policies{opts: opts, byNS: map[string][]*rule{}}
	var probs Problems
	for i, dr := range drs {
		if dr == nil {
			probs.Errors = append(probs.Errors, fmt.Errorf("DestinationRule %d of %d: is nil", i, len(drs)))
			continue
		}
		c := compiler{namespace: dr.Namespace}
		r := c.rule(dr, opts.DomainSuffix)
		id := dr.Namespace + "/" + dr.Name
		for _, w := range c.warnings {
			probs.Warnings = append(probs.Warnings, "DestinationRule "+id+": "+w)
		}
		if len(c.errs) > 0 {
			probs.Errors = append(probs.Errors, &RuleError{Namespace: dr.Namespace, Name: dr.Name, Fields: c.errs})
			continue
		}
		if dr.Spec.GetWorkloadSelector() != nil {
			probs.Warnings = append(probs.Warnings, "DestinationRule "+id+
				": spec.workloadSelector: not applied at a waypoint (Istio applies such rules only to the selected sidecars' outbound traffic); the rule is skipped")
			continue
		}
		p.byNS[r.namespace] = append(p.byNS[r.namespace], r)
	}
	for _, rs := range p.byNS {
		// Istio merges same-host rules oldest first: the oldest traffic policy wins.
		slices.SortStableFunc(rs, func(a, b *rule) int {
			if c := a.created.Compare(b.created); c != 0 {
				return c
			}
			return strings.Compare(a.name, b.name)
		})
	}
	return p, probs
}

// ForService is For with svc's hostname and namespace, and its
// trafficDistribution applied (WithTrafficDistribution).
func (p *Policies) ForService(svc *discovery.Service, port uint16) *Policy {
	if p == nil || svc.TrafficDistribution == "" {
		return p.For(svc.Hostname, svc.Namespace, port).WithTrafficDistribution(svc.TrafficDistribution)
	}
	key := policyKey{svc.Hostname, svc.Namespace, port, svc.TrafficDistribution}
	if v, ok := p.cache.Load(key); ok {
		return v.(*Policy)
	}
	pol := p.For(svc.Hostname, svc.Namespace, port).WithTrafficDistribution(svc.TrafficDistribution)
	v, _ := p.cache.LoadOrStore(key, pol)
	return v.(*Policy)
}

// For returns the policy of port (the Service port, as portLevelSettings name
// it) of the Service with hostname in namespace; never nil. The rule is the
// most specific host match (exact, then the longest wildcard) among the rules
// visible to the waypoint, searched in the waypoint's namespace, then the
// Service's, then the root namespace (Istio's order for the client proxy);
// same-host rules of one namespace merge, oldest first (the first traffic
// policy wins, subsets add up). A port-level setting replaces the whole
// top-level policy for its port: fields it omits take the defaults, as Istio
// documents. The Policy is shared: callers must not modify it.
func (p *Policies) For(hostname, namespace string, port uint16) *Policy {
	if p == nil {
		return DefaultPolicy()
	}
	key := policyKey{hostname: hostname, namespace: namespace, port: port}
	if v, ok := p.cache.Load(key); ok {
		return v.(*Policy)
	}
	v, _ := p.cache.LoadOrStore(key, p.build(hostname, namespace, port))
	return v.(*Policy)
}

func (p *Policies) build(hostname, namespace string, port uint16) *Policy {
	rules := p.lookup(strings.ToLower(hostname), namespace)
	if len(rules) == 0 {
		return defaultPolicy(!p.opts.LocalityDisabled)
	}
	var tp *trafficPolicy
	var names []string
	var subsets []subsetRule
	for _, r := range rules {
		names = append(names, r.namespace+"/"+r.name)
		if tp == nil {
			tp = r.tp
		}
		for _, s := range r.subsets {
			if !slices.ContainsFunc(subsets, func(o subsetRule) bool { return o.name == s.name }) {
				subsets = append(subsets, s)
			}
		}
	}
	top, _ := tp.forPort(uint32(port))
	pol := p.assemble(top)
	pol.Rule = strings.Join(names, ",")
	for _, s := range subsets {
		sp := p.assemble(mergeSubset(tp, s.tp, uint32(port)))
		sp.Rule = pol.Rule
		pol.Subsets = append(pol.Subsets, Subset{Name: s.name, Labels: s.labels, Policy: sp})
	}
	return pol
}

// lookup finds the rules for hostname as seen by the waypoint.
func (p *Policies) lookup(hostname, svcNS string) []*rule {
	client := cmp.Or(p.opts.Namespace, svcNS)
	for _, ns := range []string{client, svcNS, p.opts.RootNamespace} {
		if rs := mostSpecific(p.byNS[ns], hostname, client); len(rs) > 0 {
			return rs
		}
	}
	return nil
}

// mostSpecific returns the rules of one namespace, visible to client, for the
// most specific host that matches hostname.
func mostSpecific(rs []*rule, hostname, client string) []*rule {
	var exact, wild []*rule
	best := ""
	for _, r := range rs {
		if !r.export.visibleTo(r.namespace, client) {
			continue
		}
		switch {
		case r.host == hostname:
			exact = append(exact, r)
		case hostMatches(r.host, hostname):
			switch {
			case len(r.host) > len(best):
				best, wild = r.host, append(wild[:0], r)
			case r.host == best:
				wild = append(wild, r)
			}
		}
	}
	if len(exact) > 0 {
		return exact
	}
	return wild
}

// hostMatches says whether the wildcard pattern matches hostname: "*" matches
// all, "*suffix" any longer name ending in suffix (Istio's host.Name.Matches).
func hostMatches(pattern, hostname string) bool {
	suffix, ok := strings.CutPrefix(pattern, "*")
	return ok && len(hostname) > len(suffix) && strings.HasSuffix(hostname, suffix)
}

// trafficPolicy is a validated TrafficPolicy; nil sections are unset.
type trafficPolicy struct {
	sections
	ports []portPolicy
}

type portPolicy struct {
	port uint32
	sections
}

// sections are the parts of a traffic policy that portLevelSettings and
// subsets replace one by one.
type sections struct {
	lb          *lbSection
	pool        *Limits
	outlier     *Outlier
	retryBudget *RetryBudget
}

type lbSection struct {
	lb LoadBalancer
	// locality is nil when the rule leaves it to the mesh default.
	locality *LocalityPolicy
}

// forPort returns the sections for port: a port-level entry's alone (Istio's
// GetPortLevelTrafficPolicy keeps only its four sections), else the top level.
func (tp *trafficPolicy) forPort(port uint32) (sections, bool) {
	if tp == nil {
		return sections{}, false
	}
	for _, pp := range tp.ports {
		if pp.port == port {
			return pp.sections, true
		}
	}
	return tp.sections, false
}

// mergeSubset is Istio's MergeSubsetTrafficPolicy: the rule's sections for the
// port, overridden by the sections the subset sets (all of them when the subset
// has a port-level entry for the port).
func mergeSubset(tp, sub *trafficPolicy, port uint32) sections {
	base, _ := tp.forPort(port)
	if sub == nil {
		return base
	}
	s, portLevel := sub.forPort(port)
	if tp == nil {
		return s
	}
	if s.lb != nil || portLevel {
		base.lb = s.lb
	}
	if s.pool != nil || portLevel {
		base.pool = s.pool
	}
	if s.outlier != nil || portLevel {
		base.outlier = s.outlier
	}
	if s.retryBudget != nil {
		base.retryBudget = s.retryBudget
	}
	return base
}

func (p *Policies) assemble(s sections) *Policy {
	pol := defaultPolicy(!p.opts.LocalityDisabled)
	if s.pool != nil {
		pol.Limits = *s.pool
	}
	if s.retryBudget != nil {
		rb := *s.retryBudget
		pol.Limits.RetryBudget = &rb
	}
	if s.outlier != nil {
		o := *s.outlier
		o.ErrorCodes = slices.Clone(o.ErrorCodes)
		pol.Outlier = &o
	}
	if s.lb != nil {
		pol.LB = s.lb.lb
		if h := s.lb.lb.Hash; h != nil {
			hc := *h
			hc.Attributes = slices.Clone(h.Attributes)
			pol.LB.Hash = &hc
		}
		if l := s.lb.locality; l != nil {
			pol.Locality = cloneLocality(*l)
			pol.localityFromRule = true
		}
	}
	return pol
}

func cloneLocality(l LocalityPolicy) LocalityPolicy {
	l.Failover = slices.Clone(l.Failover)
	l.FailoverPriority = slices.Clone(l.FailoverPriority)
	d := make([]Distribute, len(l.Distribute))
	for i, x := range l.Distribute {
		d[i] = Distribute{From: x.From, To: slices.Clone(x.To)}
	}
	if len(d) == 0 {
		d = nil
	}
	l.Distribute = d
	return l
}
