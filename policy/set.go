package policy

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// DefaultRootNamespace is Istio's root namespace: its policies without a
// selector apply to the whole mesh, those with one to matching workloads of
// every namespace.
const DefaultRootNamespace = "istio-system"

// Set is every policy in force, indexed by namespace. It is immutable.
type Set struct {
	root  string
	authz []*Authorization
	peer  []*PeerAuthentication
	// By namespace, ztunnel's only (no targetRefs), in source order.
	authzByNS map[string][]*Authorization
	peerByNS  map[string][]*PeerAuthentication
}

// NewSet indexes the policies; root is the root namespace (DefaultRootNamespace
// when empty). The slices are kept, not copied.
func NewSet(root string, authz []*Authorization, peer []*PeerAuthentication) *Set {
	if root == "" {
		root = DefaultRootNamespace
	}
	s := &Set{root: root, authz: authz, peer: peer,
		authzByNS: map[string][]*Authorization{}, peerByNS: map[string][]*PeerAuthentication{}}
	for _, a := range authz {
		if len(a.TargetRefs) == 0 {
			s.authzByNS[a.Namespace] = append(s.authzByNS[a.Namespace], a)
		}
	}
	for _, p := range peer {
		s.peerByNS[p.Namespace] = append(s.peerByNS[p.Namespace], p)
	}
	return s
}

// RootNamespace is the namespace whose policies apply mesh-wide.
func (s *Set) RootNamespace() string {
	if s == nil {
		return DefaultRootNamespace
	}
	return s.root
}

// AuthorizationPolicies returns every AuthorizationPolicy, including those for
// the waypoint.
func (s *Set) AuthorizationPolicies() []*Authorization {
	if s == nil {
		return nil
	}
	return s.authz
}

// PeerAuthentications returns every PeerAuthentication.
func (s *Set) PeerAuthentications() []*PeerAuthentication {
	if s == nil {
		return nil
	}
	return s.peer
}

// selects reports whether sc, of an object in namespace ns, applies to a
// workload in wns with labels. An empty selector is the namespace (or, from
// the root namespace, the mesh).
func (s *Set) selects(sc *Scope, ns, wns string, labels map[string]string) bool {
	if ns != wns && ns != s.root {
		return false
	}
	if len(sc.Selector) == 0 {
		return true
	}
	for k, v := range sc.Selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// For returns the policies that apply at ztunnel to a workload in namespace ns
// with labels. The result can be kept for as long as the workload and the Set
// stay the same.
func (s *Set) For(ns string, labels map[string]string) *Applied {
	a := &Applied{}
	if s == nil {
		return a
	}
	for _, list := range [][]*Authorization{s.authzByNS[s.root], s.authzByNS[ns]} {
		for _, p := range list {
			if s.selects(&p.Scope, p.Namespace, ns, labels) {
				a.add(p)
			}
		}
		if ns == s.root {
			break
		}
	}
	s.resolvePeer(a, ns, labels)
	return a
}

func (a *Applied) add(p *Authorization) {
	a.all = append(a.all, p)
	if p.DryRun {
		// Even when invalid: a dry run never changes traffic.
		a.dry = append(a.dry, p)
		return
	}
	switch {
	case p.Action == ActionDeny:
		a.deny = append(a.deny, p)
	case p.Action == ActionAllow:
		a.allow = append(a.allow, p)
	case p.Action == ActionAudit && p.Invalid == nil:
		a.audit = append(a.audit, p)
	}
}

// Kinds and groups a waypoint's policies attach to by targetRefs.
const (
	gatewayGroup     = "gateway.networking.k8s.io"
	kindGateway      = "Gateway"
	kindGatewayClass = "GatewayClass"
	kindService      = "Service"
)

// ForWaypoint returns the policies a waypoint enforces on traffic to a service:
// those attached by targetRefs to the waypoint's Gateway (gwNamespace/gwName, from
// its namespace), to its GatewayClass class (from the root namespace, for every
// waypoint) and to the Service svcNamespace/svcName (from the Service's namespace;
// empty for workload-addressed traffic). Selector and namespace-wide policies are
// ztunnel's, never the waypoint's (Istio's rule).
func (s *Set) ForWaypoint(gwNamespace, gwName, class, svcNamespace, svcName string) *Applied {
	a := &Applied{}
	if s == nil {
		return a
	}
	for _, p := range s.authz {
		for _, r := range p.TargetRefs {
			if attaches(r, p.Namespace, s.root, gwNamespace, gwName, class, svcNamespace, svcName) {
				a.add(p)
				break
			}
		}
	}
	return a
}

func attaches(r TargetRef, policyNS, root, gwNS, gwName, class, svcNS, svcName string) bool {
	if r.Namespace != "" && r.Namespace != policyNS {
		return false // Istio allows no cross-namespace targetRefs
	}
	switch {
	case r.Group == gatewayGroup && r.Kind == kindGateway:
		return policyNS == gwNS && r.Name == gwName
	case r.Group == gatewayGroup && r.Kind == kindGatewayClass:
		return policyNS == root && r.Name == class
	case (r.Group == "" || r.Group == "core") && r.Kind == kindService:
		return svcName != "" && policyNS == svcNS && r.Name == svcName
	}
	return false
}

// resolvePeer picks the PeerAuthentications that decide ns/labels's mode: the
// oldest selecting it by label, the oldest of its namespace and the oldest of
// the root namespace (both without selector).
func (s *Set) resolvePeer(a *Applied, ns string, labels map[string]string) {
	pick := func(cur **PeerAuthentication, p *PeerAuthentication) {
		if *cur == nil || p.older(&(*cur).Meta) {
			*cur = p
		}
	}
	for _, list := range [][]*PeerAuthentication{s.peerByNS[s.root], s.peerByNS[ns]} {
		for _, p := range list {
			switch {
			case len(p.Selector) > 0:
				if s.selects(&p.Scope, p.Namespace, ns, labels) {
					pick(&a.peerWorkload, p)
				}
			case p.Namespace == ns && ns != s.root:
				pick(&a.peerNamespace, p)
			case p.Namespace == s.root:
				pick(&a.peerMesh, p)
			}
		}
		if ns == s.root {
			break
		}
	}
}

// Applied is the policies of one workload.
type Applied struct {
	all                         []*Authorization
	deny, allow, audit, dry     []*Authorization
	peerWorkload, peerNamespace *PeerAuthentication
	peerMesh                    *PeerAuthentication

	// decisions remembers Evaluate's answers at L4, where they depend on the Input
	// alone and the same clients connect again and again: walking many policies costs
	// a cache miss or more per field, a lookup costs one.
	mu        sync.RWMutex
	decisions map[l4Input]Decision
}

// l4Input is an Input without HTTP part, as a map key.
type l4Input struct {
	principal string
	src, dst  netip.Addr
	port      uint16
}

// maxDecisions bounds each workload's remembered decisions. When full they are
// forgotten all at once: inputs that never repeat (a scan) cost an occasional reset,
// not memory, and the clients that keep connecting are remembered again at once.
const maxDecisions = 256

// Authorizations returns the AuthorizationPolicies that apply, in evaluation
// order (root namespace first, then source order).
func (a *Applied) Authorizations() []*Authorization { return a.all }

// PeerAuthentications returns the PeerAuthentications in effect, most specific
// first (workload, namespace, mesh), omitting levels that have none.
func (a *Applied) PeerAuthentications() []*PeerAuthentication {
	var out []*PeerAuthentication
	for _, p := range []*PeerAuthentication{a.peerWorkload, a.peerNamespace, a.peerMesh} {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// MTLS returns the mutual TLS mode for connections to port (the workload's
// port) and the PeerAuthentication that set it (nil: Istio's default,
// PERMISSIVE).
func (a *Applied) MTLS(port uint16) (Mode, *PeerAuthentication) {
	mode, by := ModePermissive, (*PeerAuthentication)(nil)
	for _, p := range []*PeerAuthentication{a.peerMesh, a.peerNamespace, a.peerWorkload} {
		if p == nil {
			continue
		}
		if p.Invalid != nil {
			return ModeStrict, p // fail closed
		}
		if p.Mode != ModeUnset {
			mode, by = p.Mode, p
		}
		if p == a.peerWorkload {
			if m, ok := p.Ports[port]; ok && m != ModeUnset {
				mode, by = m, p
			}
		}
	}
	return mode, by
}

// Evaluate decides in against the AuthorizationPolicies: any matching DENY
// rejects; else any matching ALLOW admits; else it is denied if an ALLOW
// policy applies, admitted if none does. AUDIT policies and dry-run policies
// are reported, never enforced. It is safe for concurrent use.
func (a *Applied) Evaluate(in *Input) Decision {
	if len(a.all) == 0 {
		return noPolicy // most workloads: nothing to walk, nothing to remember
	}
	if in.HTTP != nil {
		return a.evaluate(in)
	}
	k := l4Input{principal: in.Principal, src: in.SrcIP, dst: in.DstIP, port: in.DstPort}
	a.mu.RLock()
	d, ok := a.decisions[k]
	a.mu.RUnlock()
	if !ok {
		d = a.evaluate(in)
		a.mu.Lock()
		if a.decisions == nil {
			a.decisions = make(map[l4Input]Decision)
		} else if len(a.decisions) >= maxDecisions {
			clear(a.decisions)
		}
		a.decisions[k] = d
		a.mu.Unlock()
	}
	return d.detached()
}

// detached returns d with slices and pointers of its own, so that callers of a
// remembered decision cannot change it for the next ones.
func (d Decision) detached() Decision {
	if d.Audit != nil {
		d.Audit = slices.Clone(d.Audit)
	}
	if d.DryRun != nil {
		dry := d.DryRun.detached()
		d.DryRun = &dry
	}
	return d
}

// evaluate is Evaluate without the remembered decisions.
func (a *Applied) evaluate(in *Input) Decision {
	c := &evalCtx{in: in, peer: parsePeer(in.Principal)}
	d := decide(c, a.deny, a.allow)
	for _, p := range a.audit {
		if _, ok := p.match(c); ok {
			d.Audit = append(d.Audit, p.Ref())
		}
	}
	if len(a.dry) > 0 {
		deny, allow := slices.Clone(a.deny), slices.Clone(a.allow)
		for _, p := range a.dry {
			switch p.Action {
			case ActionDeny:
				deny = append(deny, p)
			case ActionAllow:
				allow = append(allow, p)
			}
		}
		dry := decide(c, deny, allow)
		d.DryRun = &dry
	}
	return d
}

// noPolicy is the decision when no ALLOW policy applies and no DENY matches.
var noPolicy = Decision{Allow: true, Rule: -1, Reason: "no ALLOW policy applies"}

func decide(c *evalCtx, deny, allow []*Authorization) Decision {
	for _, p := range deny {
		if rule, ok := p.match(c); ok {
			return p.decision(false, rule)
		}
	}
	for _, p := range allow {
		if rule, ok := p.match(c); ok {
			return p.decision(true, rule)
		}
	}
	if len(allow) == 0 {
		return noPolicy
	}
	refs := make([]string, len(allow))
	for i, p := range allow {
		refs[i] = p.Ref()
	}
	return Decision{Rule: -1, Reason: "no ALLOW policy matched (applying: " + strings.Join(refs, ", ") + ")"}
}

func (p *Authorization) decision(allow bool, rule int) Decision {
	d := Decision{Allow: allow, Policy: p.Ref(), Kind: KindAuthorization, Rule: rule}
	if p.Invalid != nil {
		d.Reason = "invalid policy denies everything it selects: " + p.Invalid.Error()
	}
	return d
}

// match returns the index of the first matching rule. An invalid DENY matches
// everything (rule -1), an invalid ALLOW or AUDIT nothing.
func (p *Authorization) match(c *evalCtx) (int, bool) {
	if p.Invalid != nil {
		return -1, p.Action == ActionDeny
	}
	lenient := p.Action == ActionDeny
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.match(c, len(r.http) > 0, lenient) {
			return i, true
		}
	}
	return -1, false
}
