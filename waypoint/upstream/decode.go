package upstream

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/ambitmesh/ambit/internal/fielderr"
)

// compiler validates one DestinationRule as Istio's validation does (and as
// Envoy would reject), converting what it checks.
type compiler struct {
	namespace string
	errs      fielderr.List
	warnings  []string
}

func (c *compiler) warn(path, msg string) { c.warnings = append(c.warnings, path+": "+msg) }

func (c *compiler) rule(dr *networkingv1.DestinationRule, domainSuffix string) *rule {
	if dr.Name == "" {
		c.errs.Add("metadata.name", "must be set")
	}
	if dr.Namespace == "" {
		c.errs.Add("metadata.namespace", "must be set")
	}
	spec := &dr.Spec
	r := &rule{namespace: dr.Namespace, name: dr.Name, created: dr.CreationTimestamp.Time}
	if msg := checkWildcardDomain(spec.GetHost()); msg != "" {
		c.errs.Add("spec.host", msg)
	}
	r.host = resolveHost(strings.ToLower(spec.GetHost()), dr.Namespace, domainSuffix)
	r.tp = c.trafficPolicy("spec.trafficPolicy", spec.GetTrafficPolicy())
	for i, s := range spec.GetSubsets() {
		path := fmt.Sprintf("spec.subsets[%d]", i)
		if s == nil {
			c.errs.Add(path, "must not be null")
			continue
		}
		switch {
		case s.GetName() == "":
			c.errs.Add(path+".name", "must be set")
		case !isDNS1123Label(s.GetName()):
			c.errs.Add(path+".name", fmt.Sprintf("%q is not a valid DNS-1123 label", s.GetName()))
		case slices.ContainsFunc(r.subsets, func(o subsetRule) bool { return o.name == s.GetName() }):
			c.errs.Add(path+".name", fmt.Sprintf("duplicate subset name %q", s.GetName()))
		}
		c.labels(path+".labels", s.GetLabels())
		r.subsets = append(r.subsets, subsetRule{name: s.GetName(), labels: s.GetLabels(),
			tp: c.trafficPolicy(path+".trafficPolicy", s.GetTrafficPolicy())})
	}
	r.export = c.exportTo("spec.exportTo", spec.GetExportTo(), dr.Namespace, spec.GetWorkloadSelector() != nil)
	if ws := spec.GetWorkloadSelector(); ws != nil {
		c.labels("spec.workloadSelector.matchLabels", ws.GetMatchLabels())
	}
	return r
}

// resolveHost is Istio's ResolveShortnameToFQDN: a name without a dot is a
// Service of the rule's namespace.
func resolveHost(host, ns, domainSuffix string) string {
	if host == "*" || strings.Contains(host, ".") {
		return host
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return host
	}
	return host + "." + ns + ".svc." + domainSuffix
}

func (c *compiler) labels(path string, labels map[string]string) {
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if !isLabelKey(k) {
			c.errs.Add(fmt.Sprintf("%s[%q]", path, k), fmt.Sprintf("%q is not a valid label key", k))
		}
		if v := labels[k]; !isLabelValue(v) {
			c.errs.Add(fmt.Sprintf("%s[%q]", path, k), fmt.Sprintf("%q is not a valid label value", v))
		}
	}
}

func (c *compiler) exportTo(path string, list []string, ns string, selector bool) exportSet {
	var e exportSet
	seen := map[string]bool{}
	for i, x := range list {
		p := fmt.Sprintf("%s[%d]", path, i)
		key := x
		if x == "." {
			key = ns
		}
		switch {
		case seen[key]:
			c.errs.Add(p, fmt.Sprintf("duplicate entry %q", x))
		case x == "~":
			c.errs.Add(p, `"~" (none) is not allowed for a DestinationRule`)
		case x != "." && x != "*" && !isDNS1123Label(x):
			c.errs.Add(p, fmt.Sprintf("%q is not \".\", \"*\" or a namespace name", x))
		}
		seen[key] = true
		switch {
		case x == "*":
			e.all = true
		case x == "." || x == ns:
			e.private = true
		default:
			e.namespaces = append(e.namespaces, x)
		}
	}
	if e.all && len(list) > 1 {
		c.errs.Add(path, `"*" cannot be combined with other entries`)
	}
	if selector && len(list) > 0 && (len(seen) > 1 || !seen[ns]) {
		c.errs.Add(path, "a rule with a workloadSelector can only be exported to its own namespace")
	}
	if len(list) == 0 {
		e.all = true
	}
	return e
}

func (c *compiler) trafficPolicy(path string, tp *v1alpha3.TrafficPolicy) *trafficPolicy {
	if tp == nil {
		return nil
	}
	if tp.LoadBalancer == nil && tp.ConnectionPool == nil && tp.OutlierDetection == nil && tp.Tls == nil &&
		tp.PortLevelSettings == nil && tp.Tunnel == nil && tp.ProxyProtocol == nil && tp.RetryBudget == nil {
		c.errs.Add(path, "must set at least one field")
		return nil
	}
	if tp.Tunnel != nil && tp.ProxyProtocol != nil {
		c.errs.Add(path, "tunnel and proxyProtocol cannot both be set")
	}
	out := &trafficPolicy{sections: c.sections(path, tp.LoadBalancer, tp.ConnectionPool, tp.OutlierDetection, tp.Tls)}
	out.retryBudget = c.retryBudget(path+".retryBudget", tp.RetryBudget)
	if t := tp.Tunnel; t != nil {
		p := path + ".tunnel"
		if t.Protocol != "" && t.Protocol != "CONNECT" && t.Protocol != "POST" {
			c.errs.Add(p+".protocol", fmt.Sprintf("%q is not CONNECT or POST", t.Protocol))
		}
		if _, err := netip.ParseAddr(t.TargetHost); err != nil && checkFQDN(t.TargetHost) != "" {
			c.errs.Add(p+".targetHost", fmt.Sprintf("%q is not a FQDN or an IP address", t.TargetHost))
		}
		if t.TargetPort < 1 || t.TargetPort > 65535 {
			c.errs.Add(p+".targetPort", fmt.Sprintf("%d is not between 1 and 65535", t.TargetPort))
		}
		c.warn(p, "not applied: the waypoint does not tunnel TCP to another proxy")
	}
	if pp := tp.ProxyProtocol; pp != nil {
		if pp.Version != v1alpha3.TrafficPolicy_ProxyProtocol_V1 && pp.Version != v1alpha3.TrafficPolicy_ProxyProtocol_V2 {
			c.errs.Add(path+".proxyProtocol.version", fmt.Sprintf("unknown version %d", pp.Version))
		}
		c.warn(path+".proxyProtocol", "not applied: the waypoint does not send PROXY protocol headers")
	}
	for i, pl := range tp.PortLevelSettings {
		p := fmt.Sprintf("%s.portLevelSettings[%d]", path, i)
		if pl == nil {
			c.errs.Add(p, "must not be null")
			continue
		}
		var port uint32
		switch {
		case pl.Port == nil:
			c.errs.Add(p+".port", "must be set")
		case pl.Port.Number < 1 || pl.Port.Number > 65535:
			c.errs.Add(p+".port.number", fmt.Sprintf("%d is not between 1 and 65535", pl.Port.Number))
		default:
			port = pl.Port.Number
		}
		if pl.LoadBalancer == nil && pl.ConnectionPool == nil && pl.OutlierDetection == nil && pl.Tls == nil {
			c.errs.Add(p, "must set at least one of loadBalancer, connectionPool, outlierDetection and tls")
			continue
		}
		if port != 0 && slices.ContainsFunc(out.ports, func(o portPolicy) bool { return o.port == port }) {
			c.warn(p+".port.number", fmt.Sprintf("port %d is set again: the first entry applies", port))
		}
		out.ports = append(out.ports, portPolicy{port: port,
			sections: c.sections(p, pl.LoadBalancer, pl.ConnectionPool, pl.OutlierDetection, pl.Tls)})
	}
	return out
}

func (c *compiler) sections(path string, lb *v1alpha3.LoadBalancerSettings, pool *v1alpha3.ConnectionPoolSettings,
	od *v1alpha3.OutlierDetection, tls *v1alpha3.ClientTLSSettings,
) sections {
	s := sections{
		outlier: c.outlier(path+".outlierDetection", od),
		pool:    c.connectionPool(path+".connectionPool", pool),
		lb:      c.loadBalancer(path+".loadBalancer", lb, od != nil),
	}
	c.tls(path+".tls", tls)
	return s
}

// durationValue is what a google.protobuf.Duration offers.
type durationValue interface {
	AsDuration() time.Duration
	CheckValid() error
}

// duration checks a duration as Istio's ValidateDuration: at least 1 ms, to
// the millisecond; zeroOK also admits 0 (a disabled timeout).
func (c *compiler) duration(path string, d durationValue, zeroOK bool) time.Duration {
	if err := d.CheckValid(); err != nil {
		c.errs.Add(path, fmt.Sprintf("invalid duration: %v", err))
		return 0
	}
	v := d.AsDuration()
	switch {
	case v == 0 && zeroOK:
	case v < time.Millisecond:
		c.errs.Add(path, fmt.Sprintf("%v is less than 1ms", v))
	case v%time.Millisecond != 0:
		c.errs.Add(path, fmt.Sprintf("%v is not a whole number of milliseconds", v))
	}
	return v
}

func (c *compiler) percent(path string, v int32) {
	if v < 0 || v > 100 {
		c.errs.Add(path, fmt.Sprintf("%d is not between 0 and 100", v))
	}
}

func (c *compiler) nonNegative(path string, v int32) uint32 {
	if v < 0 {
		c.errs.Add(path, fmt.Sprintf("%d is negative", v))
		return 0
	}
	return uint32(v)
}

func (c *compiler) loadBalancer(path string, lb *v1alpha3.LoadBalancerSettings, outlier bool) *lbSection {
	if lb == nil {
		return nil
	}
	s := &lbSection{lb: defaultLB()}
	switch p := lb.LbPolicy.(type) {
	case nil:
	case *v1alpha3.LoadBalancerSettings_Simple:
		switch p.Simple {
		case v1alpha3.LoadBalancerSettings_UNSPECIFIED, v1alpha3.LoadBalancerSettings_LEAST_REQUEST:
		case v1alpha3.LoadBalancerSettings_LEAST_CONN: //nolint:staticcheck // the deprecated alias is still accepted
			c.warn(path+".simple", "LEAST_CONN is deprecated: LEAST_REQUEST applies")
		case v1alpha3.LoadBalancerSettings_ROUND_ROBIN:
			s.lb.Algorithm = RoundRobin
		case v1alpha3.LoadBalancerSettings_RANDOM:
			s.lb.Algorithm = Random
		case v1alpha3.LoadBalancerSettings_PASSTHROUGH:
			c.warn(path+".simple", "PASSTHROUGH is not supported at the waypoint: LEAST_REQUEST applies")
		default:
			c.errs.Add(path+".simple", fmt.Sprintf("unknown algorithm %d", p.Simple))
		}
	case *v1alpha3.LoadBalancerSettings_ConsistentHash:
		c.consistentHash(path+".consistentHash", p.ConsistentHash, &s.lb)
	case *v1alpha3.LoadBalancerSettings_BackendUtilization:
		c.warn(path+".backendUtilization", "not supported (no ORCA load reports): LEAST_REQUEST applies")
	}
	if lb.LocalityLbSetting != nil && lb.ZoneAwareLbSetting != nil {
		c.errs.Add(path, "only one of localityLbSetting and zoneAwareLbSetting can be set")
	}
	if l := lb.LocalityLbSetting; l != nil {
		s.locality = c.locality(path+".localityLbSetting", l, outlier)
	}
	if z := lb.ZoneAwareLbSetting; z != nil {
		c.zoneAware(path+".zoneAwareLbSetting", z)
		// At a waypoint Istio falls back from zone-aware to locality load
		// balancing with no setting, which assigns no priorities.
		s.locality = &LocalityPolicy{}
		c.warn(path+".zoneAwareLbSetting", "not supported at waypoints (as in Istio): locality load balancing is off")
	}
	if lb.Warmup != nil && lb.WarmupDurationSecs != nil {
		c.errs.Add(path, "only one of warmupDurationSecs and warmup can be set")
	}
	if w := lb.Warmup; w != nil {
		if w.Duration == nil {
			c.errs.Add(path+".warmup.duration", "must be set")
		} else {
			c.duration(path+".warmup.duration", w.Duration, false)
		}
		if w.MinimumPercent != nil && (w.MinimumPercent.GetValue() < 0 || w.MinimumPercent.GetValue() > 100) {
			c.errs.Add(path+".warmup.minimumPercent", fmt.Sprintf("%v is not between 0 and 100", w.MinimumPercent.GetValue()))
		}
		if w.Aggression != nil && w.Aggression.GetValue() <= 0 {
			c.errs.Add(path+".warmup.aggression", fmt.Sprintf("%v is not greater than 0", w.Aggression.GetValue()))
		}
		c.warn(path+".warmup", "slow start is not supported: new endpoints take their full share at once")
	}
	if d := lb.WarmupDurationSecs; d != nil {
		c.duration(path+".warmupDurationSecs", d, false)
		c.warn(path+".warmupDurationSecs", "slow start is not supported: new endpoints take their full share at once")
	}
	return s
}

func (c *compiler) consistentHash(path string, ch *v1alpha3.LoadBalancerSettings_ConsistentHashLB, lb *LoadBalancer) {
	lb.Algorithm = RingHash
	h := &HashPolicy{}
	lb.Hash = h
	if ch == nil {
		c.warn(path, "no hash key: picks are random")
		return
	}
	switch k := ch.HashKey.(type) {
	case nil:
		c.warn(path, "no hash key: picks are random")
	case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName:
		h.Kind, h.Name = HashHeader, k.HttpHeaderName
		if !isHeaderName(k.HttpHeaderName) {
			c.errs.Add(path+".httpHeaderName", fmt.Sprintf("%q is not a valid header name", k.HttpHeaderName))
		}
	case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_HttpCookie:
		c.cookie(path+".httpCookie", k.HttpCookie, h)
	case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_UseSourceIp:
		if k.UseSourceIp {
			h.Kind = HashSourceIP
		} else {
			c.warn(path+".useSourceIp", "false: no hash key, picks are random")
		}
	case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_HttpQueryParameterName:
		h.Kind, h.Name = HashQueryParam, k.HttpQueryParameterName
		if k.HttpQueryParameterName == "" {
			c.errs.Add(path+".httpQueryParameterName", "must not be empty")
		}
	}
	deprecated := ch.MinimumRingSize //nolint:staticcheck // validated as Istio does
	if deprecated != 0 {
		c.warn(path+".minimumRingSize", "deprecated: use ringHash.minimumRingSize")
		if ch.HashAlgorithm != nil {
			c.errs.Add(path+".minimumRingSize", "cannot be set with ringHash or maglev")
		}
		lb.MinRingSize = deprecated
	}
	switch a := ch.HashAlgorithm.(type) {
	case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_RingHash_:
		if n := a.RingHash.GetMinimumRingSize(); n != 0 {
			lb.MinRingSize = n
		}
	case *v1alpha3.LoadBalancerSettings_ConsistentHashLB_Maglev:
		lb.Algorithm = Maglev
		p := path + ".maglev.tableSize"
		switch n := a.Maglev.GetTableSize(); {
		case n == 0:
			c.errs.Add(p, "must be set")
		case n >= maxTableSize:
			c.errs.Add(p, fmt.Sprintf("%d is not less than %d", n, maxTableSize))
		case !isPrime(n):
			c.errs.Add(p, fmt.Sprintf("%d is not prime", n))
		default:
			lb.TableSize = n
		}
	}
	if lb.Algorithm == RingHash && lb.MinRingSize > MaxRingSize {
		c.errs.Add(path+".ringHash.minimumRingSize", fmt.Sprintf("%d is more than the maximum ring size %d", lb.MinRingSize, MaxRingSize))
	}
}

func (c *compiler) cookie(path string, ck *v1alpha3.LoadBalancerSettings_ConsistentHashLB_HTTPCookie, h *HashPolicy) {
	h.Kind = HashCookie
	if ck == nil || ck.Name == "" {
		c.errs.Add(path+".name", "must be set")
		return
	}
	h.Name, h.Path = ck.Name, ck.Path
	if !isToken(ck.Name) {
		c.errs.Add(path+".name", fmt.Sprintf("%q is not a valid cookie name", ck.Name))
	}
	if ck.Ttl != nil {
		if err := ck.Ttl.CheckValid(); err != nil {
			c.errs.Add(path+".ttl", fmt.Sprintf("invalid duration: %v", err))
		} else if ck.Ttl.AsDuration() < 0 {
			c.errs.Add(path+".ttl", "is negative")
		}
		h.TTL, h.HasTTL = ck.Ttl.AsDuration(), true
	}
	for i, a := range ck.Attributes {
		p := fmt.Sprintf("%s.attributes[%d].name", path, i)
		switch {
		case a.GetName() == "":
			c.errs.Add(p, "must be set")
		case slices.ContainsFunc(h.Attributes, func(o CookieAttribute) bool { return o.Name == a.GetName() }):
			c.errs.Add(p, fmt.Sprintf("duplicate attribute %q", a.GetName()))
		default:
			h.Attributes = append(h.Attributes, CookieAttribute{Name: a.GetName(), Value: a.GetValue()})
		}
	}
}

// Topology labels that cannot be mixed with region failover.
var regionZoneLabels = []string{LabelRegion, LabelZone, LabelSubzone}

func (c *compiler) locality(path string, l *v1alpha3.LocalityLoadBalancerSetting, outlier bool) *LocalityPolicy {
	out := &LocalityPolicy{Enabled: l.Enabled == nil || l.Enabled.GetValue()}
	if len(l.Distribute) > 0 && len(l.Failover) > 0 {
		c.errs.Add(path, "distribute and failover cannot both be set")
	}
	if len(l.Failover) > 0 {
		for i, p := range l.FailoverPriority {
			if slices.Contains(regionZoneLabels, p) {
				c.errs.Add(fmt.Sprintf("%s.failoverPriority[%d]", path, i), fmt.Sprintf("topology label %q cannot be used with failover", p))
			}
		}
	}
	var froms []string
	for i, d := range l.Distribute {
		p := fmt.Sprintf("%s.distribute[%d]", path, i)
		if d == nil {
			c.errs.Add(p, "must not be null")
			continue
		}
		froms = append(froms, d.From)
		dist := Distribute{From: d.From}
		var total uint32
		var tos []string
		for _, loc := range slices.Sorted(maps.Keys(d.To)) {
			w := d.To[loc]
			if w < 1 || w > 100 {
				c.errs.Add(fmt.Sprintf("%s.to[%q]", p, loc), fmt.Sprintf("weight %d is not between 1 and 100", w))
			}
			total += w
			tos = append(tos, loc)
			dist.To = append(dist.To, LocalityWeight{Locality: loc, Weight: w})
		}
		if total != 100 {
			c.errs.Add(p+".to", fmt.Sprintf("weights sum to %d, not 100", total))
		}
		c.localities(p+".to", tos)
		out.Distribute = append(out.Distribute, dist)
	}
	c.localities(path+".distribute", froms)
	if (len(l.Failover) > 0 || len(l.FailoverPriority) > 0) && !outlier {
		c.warn(path, "failover needs outlierDetection: without it no endpoint is ever unhealthy and priorities do not apply")
	}
	for i, f := range l.Failover {
		p := fmt.Sprintf("%s.failover[%d]", path, i)
		switch {
		case f == nil:
			c.errs.Add(p, "must not be null")
			continue
		case f.From == f.To:
			c.errs.Add(p, fmt.Sprintf("from and to are the same region %q", f.From))
		case strings.Contains(f.From, "/") || strings.Contains(f.To, "/"):
			c.errs.Add(p, "from and to must be regions, without '/'")
		case strings.Contains(f.From, "*") || strings.Contains(f.To, "*"):
			c.errs.Add(p, "from and to cannot contain '*'")
		}
		out.Failover = append(out.Failover, Failover{From: f.From, To: f.To})
	}
	for i, p := range l.FailoverPriority {
		if k, _, _ := strings.Cut(p, "="); !isLabelKey(k) {
			c.errs.Add(fmt.Sprintf("%s.failoverPriority[%d]", path, i), fmt.Sprintf("%q is not a label key or key=value", p))
		}
	}
	out.FailoverPriority = slices.Clone(l.FailoverPriority)
	return out
}

func (c *compiler) zoneAware(path string, z *v1alpha3.ZoneAwareLoadBalancerSetting) {
	for i, p := range z.FailoverPriority {
		if slices.Contains(regionZoneLabels, p) {
			c.errs.Add(fmt.Sprintf("%s.failoverPriority[%d]", path, i), fmt.Sprintf("topology label %q cannot be used: zone-aware load balancing handles regions and zones", p))
		}
	}
	for i, f := range z.Failover {
		p := fmt.Sprintf("%s.failover[%d]", path, i)
		switch {
		case f == nil:
			c.errs.Add(p, "must not be null")
		case f.From == f.To:
			c.errs.Add(p, fmt.Sprintf("from and to are the same region %q", f.From))
		case strings.Contains(f.From, "/") || strings.Contains(f.To, "/"):
			c.errs.Add(p, "from and to must be regions, without '/'")
		case strings.Contains(f.From, "*") || strings.Contains(f.To, "*"):
			c.errs.Add(p, "from and to cannot contain '*'")
		}
	}
	if z.MinClusterSize != nil && z.MinClusterSize.GetValue() < 1 {
		c.errs.Add(path+".minClusterSize", "must be at least 1")
	}
}

// localities checks locality patterns ("region[/zone[/subzone]]", one
// trailing '*' at most) and that no two of them overlap.
func (c *compiler) localities(path string, locs []string) {
	var parsed [][]string
	for _, l := range locs {
		if n := strings.Count(l, "*"); n > 1 || n == 1 && !strings.HasSuffix(l, "*") {
			c.errs.Add(path, fmt.Sprintf("locality %q: at most one '*', at the end", l))
			continue
		}
		parts := strings.SplitN(l, "/", 3)
		if slices.Contains(parts, "") {
			c.errs.Add(path, fmt.Sprintf("locality %q has an empty region, zone or subzone", l))
			continue
		}
		for _, o := range parsed {
			if localitiesOverlap(parts, o) {
				c.errs.Add(path, fmt.Sprintf("locality %q overlaps %q", l, strings.Join(o, "/")))
				break
			}
		}
		parsed = append(parsed, parts)
	}
}

// localitiesOverlap: every level is equal, or a wildcard (or absent) on one side.
func localitiesOverlap(a, b []string) bool {
	for i := range 3 {
		x, y := "*", "*"
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != "*" && y != "*" && x != y {
			return false
		}
		if x == "*" || y == "*" {
			return true
		}
	}
	return true
}

func (c *compiler) connectionPool(path string, p *v1alpha3.ConnectionPoolSettings) *Limits {
	if p == nil {
		return nil
	}
	l := defaultLimits()
	if p.Http == nil && p.Tcp == nil {
		c.errs.Add(path, "must set at least one of tcp and http")
		return &l
	}
	var httpIdle bool
	if h := p.Http; h != nil {
		hp := path + ".http"
		// Istio: 0 means "not set" for these (the Envoy default applies).
		if v := c.nonNegative(hp+".http1MaxPendingRequests", h.Http1MaxPendingRequests); v > 0 {
			l.MaxPendingRequests = v
		}
		if v := c.nonNegative(hp+".http2MaxRequests", h.Http2MaxRequests); v > 0 {
			l.MaxRequests = v
		}
		l.MaxRequestsPerConnection = c.nonNegative(hp+".maxRequestsPerConnection", h.MaxRequestsPerConnection)
		if v := c.nonNegative(hp+".maxRetries", h.MaxRetries); v > 0 {
			l.MaxRetries = v
		}
		if v := c.nonNegative(hp+".maxConcurrentStreams", h.MaxConcurrentStreams); v > 0 {
			l.MaxConcurrentStreams = v
		}
		if h.IdleTimeout != nil {
			l.IdleTimeout, httpIdle = c.duration(hp+".idleTimeout", h.IdleTimeout, false), true
		}
		switch h.H2UpgradePolicy {
		case v1alpha3.ConnectionPoolSettings_HTTPSettings_DEFAULT:
		case v1alpha3.ConnectionPoolSettings_HTTPSettings_DO_NOT_UPGRADE:
			l.H2Upgrade = H2UpgradeNever
		case v1alpha3.ConnectionPoolSettings_HTTPSettings_UPGRADE:
			l.H2Upgrade = H2UpgradeAlways
			if h.UseClientProtocol {
				c.errs.Add(hp+".useClientProtocol", "cannot be true with h2UpgradePolicy UPGRADE")
			}
		default:
			c.errs.Add(hp+".h2UpgradePolicy", fmt.Sprintf("unknown policy %d", h.H2UpgradePolicy))
		}
		l.UseClientProtocol = h.UseClientProtocol
		if ka := h.Http2KeepAlive; ka != nil {
			if ka.Interval == nil {
				c.errs.Add(hp+".http2KeepAlive.interval", "must be set")
			} else {
				l.HTTP2KeepAliveInterval = c.duration(hp+".http2KeepAlive.interval", ka.Interval, false)
			}
			if ka.Timeout == nil {
				c.errs.Add(hp+".http2KeepAlive.timeout", "must be set")
			} else {
				l.HTTP2KeepAliveTimeout = c.duration(hp+".http2KeepAlive.timeout", ka.Timeout, false)
			}
		}
	}
	if t := p.Tcp; t != nil {
		tp := path + ".tcp"
		if v := c.nonNegative(tp+".maxConnections", t.MaxConnections); v > 0 {
			l.MaxConnections = v
		}
		if t.ConnectTimeout != nil {
			l.ConnectTimeout = c.duration(tp+".connectTimeout", t.ConnectTimeout, false)
		}
		if t.MaxConnectionDuration != nil {
			l.MaxConnectionDuration = c.duration(tp+".maxConnectionDuration", t.MaxConnectionDuration, false)
		}
		if t.IdleTimeout != nil {
			l.TCPIdleTimeout = c.duration(tp+".idleTimeout", t.IdleTimeout, true)
			if !httpIdle {
				l.IdleTimeout = l.TCPIdleTimeout
			}
		}
		if ka := t.TcpKeepalive; ka != nil {
			k := &TCPKeepalive{Probes: ka.Probes}
			if ka.Time != nil {
				k.Time = c.duration(tp+".tcpKeepalive.time", ka.Time, false)
			}
			if ka.Interval != nil {
				k.Interval = c.duration(tp+".tcpKeepalive.interval", ka.Interval, false)
			}
			l.TCPKeepalive = k
		}
	}
	return &l
}

func (c *compiler) outlier(path string, od *v1alpha3.OutlierDetection) *Outlier {
	if od == nil {
		return nil
	}
	o := DefaultOutlier()
	if od.ConsecutiveErrors != 0 { //nolint:staticcheck // reported, as Istio does
		c.warn(path+".consecutiveErrors", "deprecated and not applied: use consecutive5xxErrors or consecutiveGatewayErrors")
	}
	if od.Consecutive_5XxErrors != nil {
		o.Consecutive5xx = od.Consecutive_5XxErrors.GetValue()
	}
	if od.ConsecutiveGatewayErrors != nil {
		o.ConsecutiveGatewayErrors = od.ConsecutiveGatewayErrors.GetValue()
	}
	o.SplitExternalLocalOriginErrors = od.SplitExternalLocalOriginErrors
	if v := od.ConsecutiveLocalOriginFailures.GetValue(); v > 0 {
		if !od.SplitExternalLocalOriginErrors {
			c.errs.Add(path+".consecutiveLocalOriginFailures", "is set but splitExternalLocalOriginErrors is false")
		}
		o.ConsecutiveLocalOriginFailures = v
	}
	if od.Interval != nil {
		o.Interval = c.duration(path+".interval", od.Interval, false)
	}
	if od.BaseEjectionTime != nil {
		o.BaseEjectionTime = c.duration(path+".baseEjectionTime", od.BaseEjectionTime, false)
	}
	o.MaxEjectionTime = max(DefaultMaxEjectionTime, o.BaseEjectionTime)
	c.percent(path+".maxEjectionPercent", od.MaxEjectionPercent)
	if od.MaxEjectionPercent > 0 {
		o.MaxEjectionPercent = uint32(min(od.MaxEjectionPercent, 100))
	}
	c.percent(path+".minHealthPercent", od.MinHealthPercent)
	o.MinHealthPercent = uint32(max(min(od.MinHealthPercent, 100), 0))
	for i, code := range od.OutlierDetectionHttpErrorCodes {
		if code < 100 || code > 599 {
			c.errs.Add(fmt.Sprintf("%s.outlierDetectionHttpErrorCodes[%d]", path, i), fmt.Sprintf("%d is not between 100 and 599", code))
			continue
		}
		if !slices.Contains(o.ErrorCodes, int(code)) {
			o.ErrorCodes = append(o.ErrorCodes, int(code))
		}
	}
	slices.Sort(o.ErrorCodes)
	if f := od.FailurePercentageThreshold; f != nil {
		if f.GetValue() > 100 {
			c.errs.Add(path+".failurePercentageThreshold", fmt.Sprintf("%d is not between 0 and 100", f.GetValue()))
		}
		c.warn(path+".failurePercentageThreshold", "not applied (nor by Istio): only consecutive errors eject")
	}
	return o
}

func (c *compiler) tls(path string, t *v1alpha3.ClientTLSSettings) {
	if t == nil {
		return
	}
	switch t.Mode {
	case v1alpha3.ClientTLSSettings_DISABLE, v1alpha3.ClientTLSSettings_ISTIO_MUTUAL:
		// The waypoint always reaches mesh endpoints over HBONE (mutual TLS).
	case v1alpha3.ClientTLSSettings_SIMPLE, v1alpha3.ClientTLSSettings_MUTUAL:
		c.warn(path+".mode", fmt.Sprintf("%s: TLS origination to endpoints is not supported by the waypoint", t.Mode))
	default:
		c.errs.Add(path+".mode", fmt.Sprintf("unknown mode %d", t.Mode))
	}
	if t.InsecureSkipVerify.GetValue() {
		if t.Mode == v1alpha3.ClientTLSSettings_SIMPLE && (t.CaCertificates != "" || t.CredentialName != "" || t.SubjectAltNames != nil) {
			c.errs.Add(path+".insecureSkipVerify", "cannot be true with caCertificates, credentialName or subjectAltNames")
		}
		if t.Mode == v1alpha3.ClientTLSSettings_MUTUAL && (t.CaCertificates != "" || t.SubjectAltNames != nil) {
			c.errs.Add(path+".insecureSkipVerify", "cannot be true with caCertificates or subjectAltNames")
		}
	}
	simpleOrMutual := t.Mode == v1alpha3.ClientTLSSettings_SIMPLE || t.Mode == v1alpha3.ClientTLSSettings_MUTUAL
	if simpleOrMutual && t.CredentialName != "" {
		if t.ClientCertificate != "" || t.CaCertificates != "" || t.PrivateKey != "" || t.CaCrl != "" {
			c.errs.Add(path+".credentialName", "cannot be set with clientCertificate, privateKey, caCertificates or caCrl")
		}
		return
	}
	if t.Mode == v1alpha3.ClientTLSSettings_MUTUAL {
		if t.ClientCertificate == "" {
			c.errs.Add(path+".clientCertificate", "must be set for MUTUAL")
		}
		if t.PrivateKey == "" {
			c.errs.Add(path+".privateKey", "must be set for MUTUAL")
		}
	}
}

func (c *compiler) retryBudget(path string, rb *v1alpha3.TrafficPolicy_RetryBudget) *RetryBudget {
	if rb == nil {
		return nil
	}
	out := &RetryBudget{Percent: DefaultRetryBudgetPercent, MinConcurrency: DefaultRetryBudgetMinConcurrency}
	if p := rb.Percent; p != nil {
		if v := p.GetValue(); v < 0 || v > 100 || math.IsNaN(v) {
			c.errs.Add(path+".percent", fmt.Sprintf("%v is not between 0 and 100", v))
		} else {
			out.Percent = v
		}
	}
	if rb.MinRetryConcurrency > 0 {
		out.MinConcurrency = rb.MinRetryConcurrency
	}
	if bi := rb.BudgetInterval; bi != nil {
		if err := bi.CheckValid(); err != nil {
			c.errs.Add(path+".budgetInterval", fmt.Sprintf("invalid duration: %v", err))
		} else if bi.AsDuration() != 0 {
			c.warn(path+".budgetInterval", "not applied: the budget counts the requests active now")
		}
	}
	return out
}
