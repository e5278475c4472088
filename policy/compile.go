package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ambitmesh/ambit/internal/fielderr"
)

// Annotations that change how a policy is enforced.
const (
	AnnotationDryRun = "istio.io/dry-run"
)

// Limits of the Istio API (its CRD's validation).
const (
	maxRules         = 512
	maxTargetRefs    = 16
	maxServiceAccts  = 16
	maxServiceAcctSz = 320
)

// Object is what the compilers need of an object's metadata.
type Object struct {
	Meta
	Annotations map[string]string
}

// CompileAuthorization compiles an AuthorizationPolicy. It always returns a
// policy: one it cannot use as written has Invalid set (every problem, with
// its field path) and fails closed.
func CompileAuthorization(obj Object, spec *securityv1beta1.AuthorizationPolicy) *Authorization {
	c := compiler{}
	p := &Authorization{Meta: obj.Meta}
	c.meta(&obj)
	p.DryRun = c.dryRun(obj.Annotations)
	switch spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
		p.Action = ActionAllow
	case securityv1beta1.AuthorizationPolicy_DENY:
		p.Action = ActionDeny
	case securityv1beta1.AuthorizationPolicy_AUDIT:
		p.Action = ActionAudit
	case securityv1beta1.AuthorizationPolicy_CUSTOM:
		p.Action = ActionDeny // fail closed: ztunnel has no external authorizer
		c.errs.Add("spec.action", "CUSTOM (external authorization) is not supported")
	default:
		p.Action = ActionDeny
		c.errs.Add("spec.action", fmt.Sprintf("unknown action %d", spec.GetAction()))
	}
	if spec.GetProvider() != nil && spec.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM {
		c.errs.Add("spec.provider", "is only used with action CUSTOM")
	}
	p.Scope = c.scope(spec.GetSelector(), spec.GetTargetRef(), spec.GetTargetRefs())
	if n := len(spec.GetRules()); n > maxRules {
		c.errs.Add("spec.rules", fmt.Sprintf("has %d entries, more than %d", n, maxRules))
	}
	for i, r := range spec.GetRules() {
		path := fmt.Sprintf("spec.rules[%d]", i)
		rule := c.rule(path, r, obj.Namespace)
		if len(rule.http) > 0 && len(p.TargetRefs) == 0 {
			p.Warnings = append(p.Warnings, l4Warning(path, p.Action, rule.http))
		}
		p.Rules = append(p.Rules, rule)
	}
	if err := c.errs.Err(); err != nil {
		p.Invalid = err
		p.Rules = nil
	}
	return p
}

// l4Warning says what ztunnel does with a rule's HTTP fields.
func l4Warning(path string, a Action, fields []string) string {
	if a == ActionDeny {
		return fmt.Sprintf("%s: ztunnel ignores its HTTP fields (%s) and so denies more than written; attach the policy to a waypoint with targetRefs for L7",
			path, strings.Join(fields, ", "))
	}
	return fmt.Sprintf("%s: ztunnel never matches a rule with HTTP fields (%s); attach the policy to a waypoint with targetRefs for L7",
		path, strings.Join(fields, ", "))
}

// CompilePeerAuthentication compiles a PeerAuthentication; one it cannot use
// has Invalid set and fails closed (STRICT for what it selects).
func CompilePeerAuthentication(obj Object, spec *securityv1beta1.PeerAuthentication) *PeerAuthentication {
	c := compiler{}
	c.meta(&obj)
	p := &PeerAuthentication{Meta: obj.Meta}
	p.Scope = c.scope(spec.GetSelector(), nil, nil)
	p.Mode = c.mode("spec.mtls.mode", spec.GetMtls())
	if len(spec.GetPortLevelMtls()) > 0 {
		if len(p.Selector) == 0 {
			c.errs.Add("spec.portLevelMtls", "requires a selector with matchLabels")
		}
		p.Ports = make(map[uint16]Mode, len(spec.GetPortLevelMtls()))
		for port, m := range spec.GetPortLevelMtls() {
			path := fmt.Sprintf("spec.portLevelMtls[%d]", port)
			if port < 1 || port > 65535 {
				c.errs.Add(path, "port must be between 1 and 65535")
				continue
			}
			p.Ports[uint16(port)] = c.mode(path+".mode", m)
		}
	}
	if err := c.errs.Err(); err != nil {
		p.Invalid = err
		p.Ports = nil
	}
	return p
}

// compiler collects the problems of one object.
type compiler struct{ errs fielderr.List }

func (c *compiler) meta(obj *Object) {
	for _, msg := range validation.IsDNS1123Subdomain(obj.Name) {
		c.errs.Add("metadata.name", fmt.Sprintf("%q: %s", obj.Name, msg))
	}
	for _, msg := range validation.IsDNS1123Label(obj.Namespace) {
		c.errs.Add("metadata.namespace", fmt.Sprintf("%q: %s", obj.Namespace, msg))
	}
}

func (c *compiler) dryRun(ann map[string]string) bool {
	v, ok := ann[AnnotationDryRun]
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		c.errs.Add(fmt.Sprintf("metadata.annotations[%q]", AnnotationDryRun), fmt.Sprintf("%q is not true or false", v))
		return false // enforced: fail closed
	}
	return b
}

func (c *compiler) mode(path string, m *securityv1beta1.PeerAuthentication_MutualTLS) Mode {
	switch m.GetMode() {
	case securityv1beta1.PeerAuthentication_MutualTLS_UNSET:
		return ModeUnset
	case securityv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		return ModeDisable
	case securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE:
		return ModePermissive
	case securityv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return ModeStrict
	}
	c.errs.Add(path, fmt.Sprintf("unknown mode %d", m.GetMode()))
	return ModeStrict
}

func (c *compiler) scope(sel *typev1beta1.WorkloadSelector, ref *typev1beta1.PolicyTargetReference, refs []*typev1beta1.PolicyTargetReference) Scope {
	var s Scope
	set := 0
	if sel != nil {
		set++
		s.Selector = sel.GetMatchLabels()
		for k, v := range s.Selector {
			path := fmt.Sprintf("spec.selector.matchLabels[%q]", k)
			for _, msg := range validation.IsQualifiedName(k) {
				c.errs.Add(path, fmt.Sprintf("key %q: %s", k, msg))
			}
			for _, msg := range validation.IsValidLabelValue(v) {
				c.errs.Add(path, fmt.Sprintf("value %q: %s", v, msg))
			}
		}
	}
	if ref != nil {
		set++
		refs = append([]*typev1beta1.PolicyTargetReference{ref}, refs...)
	}
	if len(refs) > 0 {
		set++
	}
	if set > 1 {
		c.errs.Add("spec", "only one of selector, targetRef and targetRefs may be set")
	}
	if len(refs) > maxTargetRefs {
		c.errs.Add("spec.targetRefs", fmt.Sprintf("has %d entries, more than %d", len(refs), maxTargetRefs))
	}
	for i, r := range refs {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		if r.GetKind() == "" || r.GetName() == "" {
			c.errs.Add(path, "kind and name are required")
		}
		s.TargetRefs = append(s.TargetRefs, TargetRef{Group: r.GetGroup(), Kind: r.GetKind(), Name: r.GetName(), Namespace: r.GetNamespace()})
	}
	return s
}

func (c *compiler) rule(path string, r *securityv1beta1.Rule, ns string) Rule {
	var out Rule
	if r == nil {
		return out // {} matches everything
	}
	for i, f := range r.GetFrom() {
		fp := fmt.Sprintf("%s.from[%d].source", path, i)
		src := c.source(fp, f.GetSource(), ns)
		out.http = append(out.http, prefixed("from.source.", src.usesHTTP())...)
		out.From = append(out.From, src)
	}
	for i, t := range r.GetTo() {
		tp := fmt.Sprintf("%s.to[%d].operation", path, i)
		op := c.operation(tp, t.GetOperation())
		out.http = append(out.http, prefixed("to.operation.", op.usesHTTP())...)
		out.To = append(out.To, op)
	}
	for i, w := range r.GetWhen() {
		cond := c.condition(fmt.Sprintf("%s.when[%d]", path, i), w)
		if cond.attr.http() {
			out.http = append(out.http, "when "+cond.Key)
		}
		out.When = append(out.When, cond)
	}
	return out
}

func prefixed(p string, names []string) []string {
	for i := range names {
		names[i] = p + names[i]
	}
	return names
}

func (c *compiler) source(path string, s *securityv1beta1.Source, ns string) Source {
	var out Source
	if s == nil {
		c.errs.Add(path, "is required")
		return out
	}
	out.Principals = c.principals(path+".principals", s.GetPrincipals())
	out.NotPrincipals = c.principals(path+".notPrincipals", s.GetNotPrincipals())
	out.Namespaces = c.strings(path+".namespaces", s.GetNamespaces())
	out.NotNamespaces = c.strings(path+".notNamespaces", s.GetNotNamespaces())
	out.TrustDomains = c.strings(path+".trustDomains", s.GetTrustDomains())
	out.NotTrustDomains = c.strings(path+".notTrustDomains", s.GetNotTrustDomains())
	out.ServiceAccounts = c.serviceAccounts(path+".serviceAccounts", s.GetServiceAccounts(), ns)
	out.NotServiceAccounts = c.serviceAccounts(path+".notServiceAccounts", s.GetNotServiceAccounts(), ns)
	out.IPBlocks = c.prefixes(path+".ipBlocks", s.GetIpBlocks())
	out.NotIPBlocks = c.prefixes(path+".notIpBlocks", s.GetNotIpBlocks())
	out.RequestPrincipals = c.strings(path+".requestPrincipals", s.GetRequestPrincipals())
	out.NotRequestPrincipals = c.strings(path+".notRequestPrincipals", s.GetNotRequestPrincipals())
	out.RemoteIPBlocks = c.prefixes(path+".remoteIpBlocks", s.GetRemoteIpBlocks())
	out.NotRemoteIPBlocks = c.prefixes(path+".notRemoteIpBlocks", s.GetNotRemoteIpBlocks())
	if (len(out.ServiceAccounts) > 0 || len(out.NotServiceAccounts) > 0) &&
		(len(out.Principals) > 0 || len(out.NotPrincipals) > 0 || len(out.Namespaces) > 0 || len(out.NotNamespaces) > 0) {
		c.errs.Add(path, "serviceAccounts cannot be set with principals or namespaces")
	}
	if proto.Equal(s, &securityv1beta1.Source{}) {
		c.errs.Add(path, "must set at least one field")
	}
	return out
}

func (c *compiler) operation(path string, o *securityv1beta1.Operation) Operation {
	var out Operation
	if o == nil {
		c.errs.Add(path, "is required")
		return out
	}
	out.Ports = c.ports(path+".ports", o.GetPorts())
	out.NotPorts = c.ports(path+".notPorts", o.GetNotPorts())
	out.Hosts = c.strings(path+".hosts", o.GetHosts())
	out.NotHosts = c.strings(path+".notHosts", o.GetNotHosts())
	out.Methods = c.strings(path+".methods", o.GetMethods())
	out.NotMethods = c.strings(path+".notMethods", o.GetNotMethods())
	out.Paths = c.strings(path+".paths", o.GetPaths())
	out.NotPaths = c.strings(path+".notPaths", o.GetNotPaths())
	if proto.Equal(o, &securityv1beta1.Operation{}) {
		c.errs.Add(path, "must set at least one field")
	}
	return out
}

// when keys: the L4 ones ztunnel matches, then the HTTP ones for the waypoint.
var whenKeys = map[string]attr{
	"source.ip":              attrSourceIP,
	"source.namespace":       attrSourceNamespace,
	"source.principal":       attrSourcePrincipal,
	"destination.ip":         attrDestinationIP,
	"destination.port":       attrDestinationPort,
	"remote.ip":              attrRemoteIP,
	"request.auth.principal": attrRequestAuthPrincipal,
	"request.auth.audiences": attrRequestAuthAudiences,
	"request.auth.presenter": attrRequestAuthPresenter,
	"connection.sni":         attrConnectionSNI,
}

func (c *compiler) condition(path string, w *securityv1beta1.Condition) Condition {
	out := Condition{Key: w.GetKey()}
	key := w.GetKey()
	switch a, ok := whenKeys[key]; {
	case ok:
		out.attr = a
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]") && len(key) > len("request.headers[]"):
		out.attr = attrRequestHeader
		out.header = http.CanonicalHeaderKey(key[len("request.headers[") : len(key)-1])
	case strings.HasPrefix(key, "request.auth.claims[") && strings.HasSuffix(key, "]"):
		out.attr = attrRequestAuthClaim
	case strings.HasPrefix(key, "experimental.envoy.filters."):
		out.attr = attrExperimental
	default:
		c.errs.Add(path+".key", fmt.Sprintf("unknown key %q", key))
		return out
	}
	if len(w.GetValues()) == 0 && len(w.GetNotValues()) == 0 {
		c.errs.Add(path, "must set values or notValues")
	}
	out.Values = c.values(path+".values", out.attr, w.GetValues())
	out.NotValues = c.values(path+".notValues", out.attr, w.GetNotValues())
	return out
}

func (c *compiler) values(path string, a attr, vs []string) values {
	switch a {
	case attrSourceIP, attrDestinationIP, attrRemoteIP:
		return values{ips: c.prefixes(path, vs)}
	case attrDestinationPort:
		return values{ports: c.ports(path, vs)}
	case attrSourcePrincipal:
		return values{strs: c.principals(path, vs)}
	}
	return values{strs: c.strings(path, vs)}
}

func (c *compiler) strings(path string, vs []string) Strings {
	if len(vs) == 0 {
		return nil
	}
	out := make(Strings, 0, len(vs))
	for i, v := range vs {
		if msg := patternProblem(v); msg != "" {
			c.errs.Add(fmt.Sprintf("%s[%d]", path, i), msg)
			continue
		}
		out = append(out, parsePattern(v))
	}
	return out
}

// patternProblem says what is wrong with an Istio string pattern: "*" only as
// the whole value, its first or its last character.
func patternProblem(v string) string {
	switch {
	case v == "":
		return "must not be empty"
	case v == "*":
		return ""
	case strings.Contains(strings.TrimSuffix(strings.TrimPrefix(v, "*"), "*"), "*"),
		strings.HasPrefix(v, "*") && strings.HasSuffix(v, "*"):
		return fmt.Sprintf("%q: a wildcard may only be the first or the last character", v)
	case strings.TrimSpace(v) != v:
		return fmt.Sprintf("%q has leading or trailing white space", v)
	}
	return ""
}

func (c *compiler) principals(path string, vs []string) Strings {
	for i, v := range vs {
		if strings.HasPrefix(v, "spiffe://") {
			c.errs.Add(fmt.Sprintf("%s[%d]", path, i), fmt.Sprintf("%q: write principals without spiffe:// (trust-domain/ns/NAMESPACE/sa/ACCOUNT)", v))
		}
	}
	return c.strings(path, vs)
}

func (c *compiler) serviceAccounts(path string, vs []string, ns string) []ServiceAccount {
	if len(vs) > maxServiceAccts {
		c.errs.Add(path, fmt.Sprintf("has %d entries, more than %d", len(vs), maxServiceAccts))
	}
	var out []ServiceAccount
	for i, v := range vs {
		ip := fmt.Sprintf("%s[%d]", path, i)
		sa := ServiceAccount{Namespace: ns, Name: v}
		if a, b, ok := strings.Cut(v, "/"); ok {
			sa = ServiceAccount{Namespace: a, Name: b}
		}
		switch {
		case len(v) > maxServiceAcctSz:
			c.errs.Add(ip, fmt.Sprintf("longer than %d characters", maxServiceAcctSz))
		case len(validation.IsDNS1123Label(sa.Namespace)) > 0 || len(validation.IsDNS1123Subdomain(sa.Name)) > 0:
			c.errs.Add(ip, fmt.Sprintf("%q is not NAMESPACE/SERVICEACCOUNT or SERVICEACCOUNT (no wildcards)", v))
		default:
			out = append(out, sa)
		}
	}
	return out
}

func (c *compiler) prefixes(path string, vs []string) Prefixes {
	var out Prefixes
	for i, v := range vs {
		p, err := parsePrefix(v)
		if err != nil {
			c.errs.Add(fmt.Sprintf("%s[%d]", path, i), err.Error())
			continue
		}
		out = append(out, p)
	}
	return out
}

func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", v)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q has a zone", v)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())).Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", v)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// unmapBits is how many prefix bits an IPv4-mapped address loses when unmapped.
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

func (c *compiler) ports(path string, vs []string) Ports {
	var out Ports
	for i, v := range vs {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			c.errs.Add(fmt.Sprintf("%s[%d]", path, i), fmt.Sprintf("%q is not a port (1-65535)", v))
			continue
		}
		out = append(out, uint16(n))
	}
	return out
}
