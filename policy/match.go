package policy

import (
	"net/netip"
	"strings"
)

// pattern is one Istio string match: exact, "prefix*", "*suffix", or "*"
// (any non-empty value).
type pattern struct {
	kind patternKind
	s    string
}

type patternKind uint8

const (
	exact patternKind = iota
	prefix
	suffix
	presence
)

func parsePattern(v string) pattern {
	switch {
	case v == "*":
		return pattern{kind: presence}
	case strings.HasSuffix(v, "*"):
		return pattern{kind: prefix, s: v[:len(v)-1]}
	case strings.HasPrefix(v, "*"):
		return pattern{kind: suffix, s: v[1:]}
	}
	return pattern{kind: exact, s: v}
}

func (p pattern) match(v string, fold bool) bool {
	if v == "" {
		return false // nothing matches an absent value (a plaintext peer's principal)
	}
	switch p.kind {
	case presence:
		return true
	case prefix:
		return len(v) >= len(p.s) && eq(v[:len(p.s)], p.s, fold)
	case suffix:
		return len(v) >= len(p.s) && eq(v[len(v)-len(p.s):], p.s, fold)
	}
	return eq(v, p.s, fold)
}

func eq(a, b string, fold bool) bool {
	if fold {
		return strings.EqualFold(a, b)
	}
	return a == b
}

func (p pattern) String() string {
	switch p.kind {
	case presence:
		return "*"
	case prefix:
		return p.s + "*"
	case suffix:
		return "*" + p.s
	}
	return p.s
}

// Strings is a list of patterns; it matches when one of them does.
type Strings []pattern

func (ss Strings) match(v string) bool { return ss.matchAny(v, false) }

func (ss Strings) matchAny(v string, fold bool) bool {
	for _, p := range ss {
		if p.match(v, fold) {
			return true
		}
	}
	return false
}

// Prefixes is a list of IP blocks (a single address is a /32 or /128).
type Prefixes []netip.Prefix

func (ps Prefixes) match(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Ports is a list of port numbers.
type Ports []uint16

func (ps Ports) match(p uint16) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// both applies a field and its not-twin: an unset list matches anything.
func both[L ~[]E, E, V any](pos, neg L, v V, match func(L, V) bool) bool {
	if len(pos) > 0 && !match(pos, v) {
		return false
	}
	return len(neg) == 0 || !match(neg, v)
}

// peer is an Input's principal taken apart ("td/ns/NS/sa/SA").
type peer struct {
	principal, trustDomain, namespace, serviceAccount string
}

func parsePeer(principal string) peer {
	p := peer{principal: principal}
	parts := strings.Split(principal, "/")
	if len(parts) > 0 {
		p.trustDomain = parts[0]
	}
	if len(parts) == 5 && parts[1] == "ns" && parts[3] == "sa" {
		p.namespace, p.serviceAccount = parts[2], parts[4]
	}
	return p
}

// evalCtx is one evaluation's Input with the principal taken apart once.
type evalCtx struct {
	in   *Input
	peer peer
}

func (s *Source) match(c *evalCtx) bool {
	p := &c.peer
	if !both(s.Principals, s.NotPrincipals, p.principal, Strings.match) ||
		!both(s.Namespaces, s.NotNamespaces, p.namespace, Strings.match) ||
		!both(s.TrustDomains, s.NotTrustDomains, p.trustDomain, Strings.match) ||
		!both(s.ServiceAccounts, s.NotServiceAccounts, *p, matchServiceAccount) ||
		!both(s.IPBlocks, s.NotIPBlocks, c.in.SrcIP, Prefixes.match) {
		return false
	}
	if r := c.in.HTTP; r != nil {
		return both(s.RequestPrincipals, s.NotRequestPrincipals, r.RequestPrincipal, Strings.match) &&
			both(s.RemoteIPBlocks, s.NotRemoteIPBlocks, r.RemoteIP, Prefixes.match)
	}
	return true
}

func matchServiceAccount(sas []ServiceAccount, p peer) bool {
	if p.serviceAccount == "" {
		return false
	}
	for _, sa := range sas {
		if sa.Namespace == p.namespace && sa.Name == p.serviceAccount {
			return true
		}
	}
	return false
}

func (s *Source) usesHTTP() []string {
	var f []string
	f = appendIf(f, "requestPrincipals", len(s.RequestPrincipals) > 0)
	f = appendIf(f, "notRequestPrincipals", len(s.NotRequestPrincipals) > 0)
	f = appendIf(f, "remoteIpBlocks", len(s.RemoteIPBlocks) > 0)
	return appendIf(f, "notRemoteIpBlocks", len(s.NotRemoteIPBlocks) > 0)
}

func (o *Operation) match(c *evalCtx) bool {
	if !both(o.Ports, o.NotPorts, c.in.DstPort, Ports.match) {
		return false
	}
	r := c.in.HTTP
	if r == nil {
		return true
	}
	host := func(ss Strings, v string) bool { return ss.matchAny(v, true) }
	return both(o.Hosts, o.NotHosts, r.Host, host) &&
		both(o.Methods, o.NotMethods, r.Method, Strings.match) &&
		both(o.Paths, o.NotPaths, r.Path, Strings.match)
}

func (o *Operation) usesHTTP() []string {
	var f []string
	for _, x := range []struct {
		name string
		set  bool
	}{
		{"hosts", len(o.Hosts) > 0}, {"notHosts", len(o.NotHosts) > 0},
		{"methods", len(o.Methods) > 0}, {"notMethods", len(o.NotMethods) > 0},
		{"paths", len(o.Paths) > 0}, {"notPaths", len(o.NotPaths) > 0},
	} {
		f = appendIf(f, x.name, x.set)
	}
	return f
}

func appendIf(f []string, name string, ok bool) []string {
	if ok {
		return append(f, name)
	}
	return f
}

// attr is a when key.
type attr uint8

const (
	attrSourceIP attr = iota
	attrSourceNamespace
	attrSourcePrincipal
	attrDestinationIP
	attrDestinationPort
	// HTTP keys: the waypoint's.
	attrRequestHeader
	attrRequestAuthPrincipal
	attrRequestAuthAudiences
	attrRequestAuthPresenter
	attrRequestAuthClaim
	attrRemoteIP
	attrConnectionSNI
	attrExperimental
)

func (a attr) http() bool { return a >= attrRequestHeader }

// values is a when entry's values or notValues, parsed for its key.
type values struct {
	strs  Strings
	ips   Prefixes
	ports Ports
}

func (v *values) empty() bool { return len(v.strs) == 0 && len(v.ips) == 0 && len(v.ports) == 0 }

func (v *values) match(c *evalCtx, k *Condition) bool {
	switch k.attr {
	case attrSourceIP:
		return v.ips.match(c.in.SrcIP)
	case attrDestinationIP:
		return v.ips.match(c.in.DstIP)
	case attrDestinationPort:
		return v.ports.match(c.in.DstPort)
	case attrSourceNamespace:
		return v.strs.match(c.peer.namespace)
	case attrSourcePrincipal:
		return v.strs.match(c.peer.principal)
	case attrRemoteIP:
		return v.ips.match(c.in.HTTP.RemoteIP)
	case attrRequestAuthPrincipal:
		return v.strs.match(c.in.HTTP.RequestPrincipal)
	case attrRequestHeader:
		// Each value of a repeated header on its own (ISTIO-SECURITY-2026-001).
		for _, h := range c.in.HTTP.Headers[k.header] {
			if v.strs.match(h) {
				return true
			}
		}
		return false
	}
	// Claims, audiences, presenter, SNI and Envoy's experimental keys need what
	// no caller passes yet: they match nothing.
	return false
}

func (k *Condition) match(c *evalCtx) bool {
	if k.attr.http() && c.in.HTTP == nil {
		return true // only reached by rules that ignore HTTP fields (see Rule.match)
	}
	if !k.Values.empty() && !k.Values.match(c, k) {
		return false
	}
	return k.NotValues.empty() || !k.NotValues.match(c, k)
}

// match reports whether the rule matches. lenient (a DENY evaluated at L4)
// ignores HTTP fields, which denies more than written; otherwise a rule with
// HTTP fields never matches at L4, which allows less (Istio ambient's ztunnel).
func (r *Rule) match(c *evalCtx, usesHTTP, lenient bool) bool {
	if c.in.HTTP == nil && usesHTTP && !lenient {
		return false
	}
	if len(r.From) > 0 && !anyMatch(r.From, c) {
		return false
	}
	if len(r.To) > 0 && !anyMatch(r.To, c) {
		return false
	}
	for i := range r.When {
		if !r.When[i].match(c) {
			return false
		}
	}
	return true
}

func anyMatch[T any, P interface {
	*T
	match(*evalCtx) bool
}](xs []T, c *evalCtx) bool {
	for i := range xs {
		if P(&xs[i]).match(c) {
			return true
		}
	}
	return false
}
