package upstream

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/internal/fielderr"
)

const reviews = "reviews.default.svc.cluster.local"

func TestDefaultsWithoutRule(t *testing.T) {
	want := &Policy{
		LB:       LoadBalancer{Algorithm: LeastRequest, ChoiceCount: 2, MinRingSize: 1024, TableSize: 65537},
		Locality: LocalityPolicy{Enabled: true},
		Limits: Limits{MaxConnections: Unlimited, MaxPendingRequests: Unlimited, MaxRequests: Unlimited,
			MaxRetries: Unlimited, ConnectTimeout: 10 * time.Second, IdleTimeout: time.Hour,
			TCPIdleTimeout: time.Hour, MaxConcurrentStreams: 1<<31 - 1},
	}
	var nilPolicies *Policies
	p, _ := Compile(nil, Options{})
	for name, got := range map[string]*Policy{
		"nil Policies": nilPolicies.For(reviews, "default", 80),
		"no rules":     p.For(reviews, "default", 80),
		"Default":      DefaultPolicy(),
	} {
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v, want %+v", name, got, want)
		}
	}
	off, _ := Compile(nil, Options{LocalityDisabled: true})
	if off.For(reviews, "default", 80).Locality.Enabled {
		t.Error("LocalityDisabled: locality load balancing is on")
	}
}

func TestOutlierDefaults(t *testing.T) {
	tests := []struct {
		name, od string
		want     func(o *Outlier)
	}{
		{"empty", `{}`, func(*Outlier) {}},
		{"5xx off", `{consecutive5xxErrors: 0}`, func(o *Outlier) { o.Consecutive5xx = 0 }},
		{"gateway on", `{consecutiveGatewayErrors: 3}`, func(o *Outlier) { o.ConsecutiveGatewayErrors = 3 }},
		{"percent 0 is the default", `{maxEjectionPercent: 0, minHealthPercent: 30}`, func(o *Outlier) { o.MinHealthPercent = 30 }},
		{"split", `{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}`, func(o *Outlier) {
			o.SplitExternalLocalOriginErrors, o.ConsecutiveLocalOriginFailures = true, 2
		}},
		{"long base raises the cap", `{baseEjectionTime: 400s, interval: 1s}`, func(o *Outlier) {
			o.BaseEjectionTime, o.MaxEjectionTime, o.Interval = 400*time.Second, 400*time.Second, time.Second
		}},
		{"error codes", `{outlierDetectionHttpErrorCodes: [503, 429, 503]}`, func(o *Outlier) { o.ErrorCodes = []int{429, 503} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, `
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: `+tt.od, Options{})
			want := DefaultOutlier()
			tt.want(want)
			if got := p.For(reviews, "default", 80).Outlier; !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

// ruleOf returns the rule name (namespace/name) that applies, "" for none.
func ruleOf(p *Policies, host, ns string) string { return p.For(host, ns, 80).Rule }

func TestHostPrecedence(t *testing.T) {
	tests := []struct {
		name      string
		rules     string
		opts      Options
		host, ns  string
		wantRule  string
		wantLBAlg Algorithm
	}{
		{
			name: "exact beats wildcards",
			rules: `
metadata: {name: all, namespace: default}
spec: {host: "*", trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
metadata: {name: ns-wide, namespace: default}
spec: {host: "*.default.svc.cluster.local", trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
metadata: {name: short, namespace: default}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}`,
			host: reviews, ns: "default", wantRule: "default/short", wantLBAlg: RoundRobin,
		},
		{
			name: "longest wildcard",
			rules: `
metadata: {name: svc, namespace: default}
spec: {host: "*.svc.cluster.local", trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
metadata: {name: ns-wide, namespace: default}
spec: {host: "*.default.svc.cluster.local", trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}`,
			host: reviews, ns: "default", wantRule: "default/ns-wide", wantLBAlg: RoundRobin,
		},
		{
			name: "a short name is relative to the rule's namespace",
			rules: `
metadata: {name: other, namespace: other}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			host: reviews, ns: "default", wantRule: "",
		},
		{
			name: "FQDN from another namespace",
			rules: `
metadata: {name: other, namespace: other}
spec: {host: reviews.default.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			opts: Options{Namespace: "other"}, host: reviews, ns: "default", wantRule: "other/other", wantLBAlg: Random,
		},
		{
			name: "the waypoint's namespace first, even less specific",
			rules: `
metadata: {name: wp-all, namespace: wp}
spec: {host: "*", trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
---
metadata: {name: svc, namespace: default}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			opts: Options{Namespace: "wp"}, host: reviews, ns: "default", wantRule: "wp/wp-all", wantLBAlg: RoundRobin,
		},
		{
			name: "the service's namespace before the root namespace",
			rules: `
metadata: {name: mesh, namespace: istio-system}
spec: {host: reviews.default.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
metadata: {name: svc, namespace: default}
spec: {host: "*.default.svc.cluster.local", trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}`,
			host: reviews, ns: "default", wantRule: "default/svc", wantLBAlg: RoundRobin,
		},
		{
			name: "the root namespace last",
			rules: `
metadata: {name: mesh, namespace: istio-system}
spec: {host: "*.cluster.local", trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			host: reviews, ns: "default", wantRule: "istio-system/mesh", wantLBAlg: Random,
		},
		{
			name: "exportTo . hides a rule from other namespaces",
			rules: `
metadata: {name: private, namespace: default}
spec: {host: reviews, exportTo: ["."], trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
metadata: {name: mesh, namespace: istio-system}
spec: {host: "*", trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}`,
			opts: Options{Namespace: "wp"}, host: reviews, ns: "default", wantRule: "istio-system/mesh", wantLBAlg: RoundRobin,
		},
		{
			name: "exportTo . applies in its own namespace",
			rules: `
metadata: {name: private, namespace: default}
spec: {host: reviews, exportTo: ["."], trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			host: reviews, ns: "default", wantRule: "default/private", wantLBAlg: Random,
		},
		{
			name: "exportTo a namespace",
			rules: `
metadata: {name: to-wp, namespace: default}
spec: {host: reviews, exportTo: [wp], trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			opts: Options{Namespace: "wp"}, host: reviews, ns: "default", wantRule: "default/to-wp", wantLBAlg: Random,
		},
		{
			name: "exportTo another namespace only",
			rules: `
metadata: {name: to-x, namespace: default}
spec: {host: reviews, exportTo: [x], trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			opts: Options{Namespace: "wp"}, host: reviews, ns: "default", wantRule: "",
		},
		{
			name: "same host in one namespace: the oldest policy wins",
			rules: `
metadata: {name: newer, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
metadata: {name: older, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}`,
			host: reviews, ns: "default", wantRule: "default/older,default/newer", wantLBAlg: RoundRobin,
		},
		{
			name: "a custom domain suffix",
			rules: `
metadata: {name: short, namespace: default}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`,
			opts: Options{DomainSuffix: "corp.example"}, host: "reviews.default.svc.corp.example", ns: "default",
			wantRule: "default/short", wantLBAlg: Random,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, tt.rules, tt.opts)
			pol := p.For(tt.host, tt.ns, 80)
			if pol.Rule != tt.wantRule {
				t.Errorf("rule %q, want %q", pol.Rule, tt.wantRule)
			}
			if tt.wantRule != "" && pol.LB.Algorithm != tt.wantLBAlg {
				t.Errorf("algorithm %v, want %v", pol.LB.Algorithm, tt.wantLBAlg)
			}
		})
	}
}

func TestPortLevelSettings(t *testing.T) {
	p := mustCompile(t, `
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {http: {http2MaxRequests: 10}}
    outlierDetection: {consecutive5xxErrors: 3}
    retryBudget: {percent: 50}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
    - port: {number: 9090}
      connectionPool: {tcp: {maxConnections: 7}}
    - port: {number: 9090}
      loadBalancer: {simple: RANDOM}`, Options{})
	top := p.For(reviews, "default", 80)
	if top.LB.Algorithm != RoundRobin || top.Limits.MaxRequests != 10 || top.Outlier == nil ||
		top.Outlier.Consecutive5xx != 3 || top.Limits.RetryBudget == nil {
		t.Errorf("port 80: %+v", top)
	}
	// A port-level entry replaces the whole policy: what it omits is the default.
	port := p.For(reviews, "default", 9080)
	if port.LB.Algorithm != Random || port.Limits.MaxRequests != Unlimited || port.Outlier != nil || port.Limits.RetryBudget != nil {
		t.Errorf("port 9080: %+v", port)
	}
	first := p.For(reviews, "default", 9090)
	if first.LB.Algorithm != LeastRequest || first.Limits.MaxConnections != 7 {
		t.Errorf("port 9090: the first entry should apply: %+v", first)
	}
}

func TestSubsets(t *testing.T) {
	p := mustCompile(t, `
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {http: {http2MaxRequests: 10}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
      outlierDetection: {consecutive5xxErrors: 2}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: RANDOM}`, Options{})
	pol := p.For(reviews, "default", 80)
	if pol.LB.Algorithm != RoundRobin || pol.Outlier != nil {
		t.Fatalf("the port's own policy changed: %+v", pol)
	}
	tests := []struct {
		subset      string
		alg         Algorithm
		maxRequests uint32
		outlier     bool
	}{
		{"v1", RoundRobin, 10, false},
		{"v2", Random, 10, true},         // sections it sets replace, others are inherited
		{"v3", Random, Unlimited, false}, // a port-level entry replaces all sections
	}
	for _, tt := range tests {
		s := pol.Subset(tt.subset)
		if s == nil {
			t.Errorf("no subset %s", tt.subset)
			continue
		}
		if s.Policy.LB.Algorithm != tt.alg || s.Policy.Limits.MaxRequests != tt.maxRequests || (s.Policy.Outlier != nil) != tt.outlier {
			t.Errorf("subset %s: %+v", tt.subset, s.Policy)
		}
		if !s.Matches(map[string]string{"version": tt.subset, "app": "reviews"}) || s.Matches(map[string]string{"app": "reviews"}) {
			t.Errorf("subset %s: label match wrong", tt.subset)
		}
	}
}

func TestLoadBalancerSettings(t *testing.T) {
	tests := []struct {
		lb   string
		want LoadBalancer
	}{
		{`{simple: LEAST_REQUEST}`, LoadBalancer{Algorithm: LeastRequest, ChoiceCount: 2, MinRingSize: 1024, TableSize: 65537}},
		{`{simple: LEAST_CONN}`, LoadBalancer{Algorithm: LeastRequest, ChoiceCount: 2, MinRingSize: 1024, TableSize: 65537}},
		{`{consistentHash: {httpHeaderName: x-user}}`, LoadBalancer{Algorithm: RingHash, ChoiceCount: 2, MinRingSize: 1024, TableSize: 65537,
			Hash: &HashPolicy{Kind: HashHeader, Name: "x-user"}}},
		{`{consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 4096}}}`, LoadBalancer{Algorithm: RingHash, ChoiceCount: 2,
			MinRingSize: 4096, TableSize: 65537, Hash: &HashPolicy{Kind: HashSourceIP}}},
		{`{consistentHash: {httpQueryParameterName: u, maglev: {tableSize: 131}}}`, LoadBalancer{Algorithm: Maglev, ChoiceCount: 2,
			MinRingSize: 1024, TableSize: 131, Hash: &HashPolicy{Kind: HashQueryParam, Name: "u"}}},
		{`{consistentHash: {httpCookie: {name: s, path: /, ttl: 10s, attributes: [{name: SameSite, value: Lax}]}}}`, LoadBalancer{
			Algorithm: RingHash, ChoiceCount: 2, MinRingSize: 1024, TableSize: 65537,
			Hash: &HashPolicy{Kind: HashCookie, Name: "s", Path: "/", TTL: 10 * time.Second, HasTTL: true,
				Attributes: []CookieAttribute{{"SameSite", "Lax"}}}}},
	}
	for _, tt := range tests {
		p := mustCompile(t, `
metadata: {name: r, namespace: default}
spec: {host: reviews, trafficPolicy: {loadBalancer: `+tt.lb+`}}`, Options{})
		if got := p.For(reviews, "default", 80).LB; !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %+v, want %+v", tt.lb, got, tt.want)
		}
	}
}

func TestConnectionPool(t *testing.T) {
	p := mustCompile(t, `
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, idleTimeout: 0s, tcpKeepalive: {time: 7200s, interval: 75s}}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 1000, maxRequestsPerConnection: 10, maxRetries: 4,
             h2UpgradePolicy: UPGRADE, http2KeepAlive: {interval: 10s, timeout: 20s}}`, Options{})
	want := defaultLimits()
	// tcp.idleTimeout 0s disables both idle timeouts (Istio uses it for HTTP when http.idleTimeout is unset).
	want.MaxConnections, want.ConnectTimeout, want.TCPIdleTimeout, want.IdleTimeout = 100, 30*time.Millisecond, 0, 0
	want.TCPKeepalive = &TCPKeepalive{Time: 7200 * time.Second, Interval: 75 * time.Second}
	want.MaxPendingRequests, want.MaxRequests, want.MaxRequestsPerConnection, want.MaxRetries = 5, 1000, 10, 4
	want.H2Upgrade, want.HTTP2KeepAliveInterval, want.HTTP2KeepAliveTimeout = H2UpgradeAlways, 10*time.Second, 20*time.Second
	if got := p.For(reviews, "default", 80).Limits; !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name, spec, want string
	}{
		{"no host", `{trafficPolicy: {loadBalancer: {simple: RANDOM}}}`, "spec.host: must be set"},
		{"bad host", `{host: "Reviews_1"}`, `spec.host: "Reviews_1": label "Reviews_1" is not a valid DNS-1123 label or wildcard`},
		{"wildcard inside", `{host: "a.*.com"}`, `spec.host: "a.*.com": label "*" is not a valid DNS-1123 label`},
		{"empty traffic policy", `{host: r, trafficPolicy: {}}`, "spec.trafficPolicy: must set at least one field"},
		{"maglev not prime", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}}`,
			"spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not prime"},
		{"maglev too large", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}}}}`,
			"maglev.tableSize: 5000011 is not less than 5000011"},
		{"maglev unset", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}}}}}`,
			"maglev.tableSize: must be set"},
		{"ring too large", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 9000000}}}}}`,
			"ringHash.minimumRingSize: 9000000 is more than the maximum ring size 8388608"},
		{"deprecated ring size with algorithm", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 10, ringHash: {}}}}}`,
			"consistentHash.minimumRingSize: cannot be set with ringHash or maglev"},
		{"cookie without name", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 0s}}}}}`,
			"consistentHash.httpCookie.name: must be set"},
		{"duplicate cookie attribute", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: a, attributes: [{name: x}, {name: x}]}}}}}`,
			`httpCookie.attributes[1].name: duplicate attribute "x"`},
		{"bad header name", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: "a b"}}}}`,
			`consistentHash.httpHeaderName: "a b" is not a valid header name`},
		{"interval below 1ms", `{host: r, trafficPolicy: {outlierDetection: {interval: 0.0005s}}}`,
			"spec.trafficPolicy.outlierDetection.interval: 500µs is less than 1ms"},
		{"base ejection not whole ms", `{host: r, trafficPolicy: {outlierDetection: {baseEjectionTime: 1.0005s}}}`,
			"outlierDetection.baseEjectionTime: 1.0005s is not a whole number of milliseconds"},
		{"max ejection percent", `{host: r, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}`,
			"outlierDetection.maxEjectionPercent: 101 is not between 0 and 100"},
		{"min health percent", `{host: r, trafficPolicy: {outlierDetection: {minHealthPercent: -1}}}`,
			"outlierDetection.minHealthPercent: -1 is not between 0 and 100"},
		{"local origin without split", `{host: r, trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}}`,
			"outlierDetection.consecutiveLocalOriginFailures: is set but splitExternalLocalOriginErrors is false"},
		{"error code", `{host: r, trafficPolicy: {outlierDetection: {outlierDetectionHttpErrorCodes: [99]}}}`,
			"outlierDetectionHttpErrorCodes[0]: 99 is not between 100 and 599"},
		{"empty pool", `{host: r, trafficPolicy: {connectionPool: {}}}`,
			"spec.trafficPolicy.connectionPool: must set at least one of tcp and http"},
		{"negative connections", `{host: r, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}`,
			"connectionPool.tcp.maxConnections: -1 is negative"},
		{"connect timeout", `{host: r, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0s}}}}`,
			"connectionPool.tcp.connectTimeout: 0s is less than 1ms"},
		{"upgrade with client protocol", `{host: r, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}}`,
			"connectionPool.http.useClientProtocol: cannot be true with h2UpgradePolicy UPGRADE"},
		{"keepalive without timeout", `{host: r, trafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 1s}}}}}`,
			"connectionPool.http.http2KeepAlive.timeout: must be set"},
		{"distribute and failover", `{host: r, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: "a/*", to: {"a/*": 100}}], failover: [{from: a, to: b}]}}}}`,
			"loadBalancer.localityLbSetting: distribute and failover cannot both be set"},
		{"distribute sum", `{host: r, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: "a/*", to: {"a/*": 60, "b/*": 30}}]}}}}`,
			"localityLbSetting.distribute[0].to: weights sum to 90, not 100"},
		{"distribute overlap", `{host: r, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: "a/*", to: {"a/*": 50, "a/z1": 50}}]}}}}`,
			`localityLbSetting.distribute[0].to: locality "a/z1" overlaps "a/*"`},
		{"failover same region", `{host: r, trafficPolicy: {outlierDetection: {}, loadBalancer: {localityLbSetting: {failover: [{from: a, to: a}]}}}}`,
			`localityLbSetting.failover[0]: from and to are the same region "a"`},
		{"failover zone", `{host: r, trafficPolicy: {outlierDetection: {}, loadBalancer: {localityLbSetting: {failover: [{from: a/z, to: b}]}}}}`,
			"localityLbSetting.failover[0]: from and to must be regions"},
		{"failover with zone priority", `{host: r, trafficPolicy: {outlierDetection: {}, loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}], failoverPriority: [topology.kubernetes.io/zone]}}}}`,
			`localityLbSetting.failoverPriority[0]: topology label "topology.kubernetes.io/zone" cannot be used with failover`},
		{"locality and zone aware", `{host: r, trafficPolicy: {loadBalancer: {localityLbSetting: {}, zoneAwareLbSetting: {}}}}`,
			"spec.trafficPolicy.loadBalancer: only one of localityLbSetting and zoneAwareLbSetting can be set"},
		{"warmup aggression", `{host: r, trafficPolicy: {loadBalancer: {warmup: {duration: 10s, aggression: 0}}}}`,
			"loadBalancer.warmup.aggression: 0 is not greater than 0"},
		{"port level without port", `{host: r, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}`,
			"spec.trafficPolicy.portLevelSettings[0].port: must be set"},
		{"port level empty", `{host: r, trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}}`,
			"spec.trafficPolicy.portLevelSettings[0]: must set at least one of"},
		{"port level bad port", `{host: r, trafficPolicy: {portLevelSettings: [{port: {number: 70000}, loadBalancer: {simple: RANDOM}}]}}`,
			"portLevelSettings[0].port.number: 70000 is not between 1 and 65535"},
		{"port level inner field", `{host: r, trafficPolicy: {portLevelSettings: [{port: {number: 80}, outlierDetection: {interval: 0s}}]}}`,
			"spec.trafficPolicy.portLevelSettings[0].outlierDetection.interval: 0s is less than 1ms"},
		{"mutual without certificate", `{host: r, trafficPolicy: {tls: {mode: MUTUAL, privateKey: /k}}}`,
			"spec.trafficPolicy.tls.clientCertificate: must be set for MUTUAL"},
		{"tunnel with proxy protocol", `{host: r, trafficPolicy: {tunnel: {targetHost: a.b, targetPort: 80}, proxyProtocol: {}}}`,
			"spec.trafficPolicy: tunnel and proxyProtocol cannot both be set"},
		{"tunnel port", `{host: r, trafficPolicy: {tunnel: {targetHost: a.b, targetPort: 0}}}`,
			"tunnel.targetPort: 0 is not between 1 and 65535"},
		{"retry budget percent", `{host: r, trafficPolicy: {retryBudget: {percent: 150}}}`,
			"retryBudget.percent: 150 is not between 0 and 100"},
		{"subset name", `{host: r, subsets: [{name: V1}]}`, `spec.subsets[0].name: "V1" is not a valid DNS-1123 label`},
		{"duplicate subset", `{host: r, subsets: [{name: v1}, {name: v1}]}`, `spec.subsets[1].name: duplicate subset name "v1"`},
		{"subset label", `{host: r, subsets: [{name: v1, labels: {"a b": x}}]}`, `spec.subsets[0].labels["a b"]: "a b" is not a valid label key`},
		{"subset policy", `{host: r, subsets: [{name: v1, trafficPolicy: {outlierDetection: {maxEjectionPercent: 200}}}]}`,
			"spec.subsets[0].trafficPolicy.outlierDetection.maxEjectionPercent: 200 is not between 0 and 100"},
		{"exportTo none", `{host: r, exportTo: ["~"]}`, `spec.exportTo[0]: "~" (none) is not allowed`},
		{"exportTo duplicate", `{host: r, exportTo: [".", default]}`, `spec.exportTo[1]: duplicate entry "default"`},
		{"exportTo star and more", `{host: r, exportTo: ["*", a]}`, `spec.exportTo: "*" cannot be combined with other entries`},
		{"exportTo bad", `{host: r, exportTo: ["A"]}`, `spec.exportTo[0]: "A" is not`},
		{"selector exported", `{host: r, workloadSelector: {matchLabels: {app: a}}, exportTo: [other]}`,
			"spec.exportTo: a rule with a workloadSelector can only be exported to its own namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			drs := decodeDRs(t, `
metadata: {name: bad, namespace: default}
spec: `+tt.spec+`
---
metadata: {name: good, namespace: default}
spec: {host: "*", trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}`)
			p, probs := Compile(drs, Options{})
			if len(probs.Errors) != 1 {
				t.Fatalf("errors %v, want one", probs.Errors)
			}
			err := probs.Errors[0]
			msg := err.Error()
			if !strings.HasPrefix(msg, "DestinationRule default/bad: ") || !strings.Contains(msg, tt.want) {
				t.Errorf("error %q, want it to name default/bad and contain %q", msg, tt.want)
			}
			var re *RuleError
			if !errors.As(err, &re) || len(fielderr.All(err)) == 0 {
				t.Errorf("error %v is not a RuleError with field errors", err)
			}
			// The bad rule is left out; the good one still applies.
			if got := p.For(reviews, "default", 80); got.Rule != "default/good" || got.LB.Algorithm != RoundRobin {
				t.Errorf("policy from %q (%v), want default/good", got.Rule, got.LB.Algorithm)
			}
		})
	}
}

func TestCompileWarnings(t *testing.T) {
	tests := []struct {
		name, spec, want string
		check            func(t *testing.T, p *Policy)
	}{
		{"tls origination", `{host: r, trafficPolicy: {tls: {mode: SIMPLE}}}`, "spec.trafficPolicy.tls.mode: SIMPLE: TLS origination", nil},
		{"tunnel", `{host: r, trafficPolicy: {tunnel: {targetHost: a.b, targetPort: 80}}}`, "spec.trafficPolicy.tunnel: not applied", nil},
		{"proxy protocol", `{host: r, trafficPolicy: {proxyProtocol: {version: V2}}}`, "spec.trafficPolicy.proxyProtocol: not applied", nil},
		{"warmup", `{host: r, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s}}}}`, "loadBalancer.warmup: slow start", func(t *testing.T, p *Policy) {
			if p.LB.Algorithm != RoundRobin {
				t.Errorf("algorithm %v", p.LB.Algorithm)
			}
		}},
		{"passthrough", `{host: r, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}`, "PASSTHROUGH is not supported", nil},
		{"failover without outlier detection", `{host: r, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}]}}}}`,
			"localityLbSetting: failover needs outlierDetection", nil},
		{"zone aware", `{host: r, trafficPolicy: {loadBalancer: {zoneAwareLbSetting: {enabled: true}}, outlierDetection: {}}}`,
			"zoneAwareLbSetting: not supported at waypoints", func(t *testing.T, p *Policy) {
				if p.Locality.Enabled {
					t.Error("locality load balancing should be off")
				}
			}},
		{"consecutive errors", `{host: r, trafficPolicy: {outlierDetection: {consecutiveErrors: 3}}}`, "consecutiveErrors: deprecated and not applied", nil},
		{"failure percentage", `{host: r, trafficPolicy: {outlierDetection: {failurePercentageThreshold: 50}}}`, "failurePercentageThreshold: not applied", nil},
		{"hash without key", `{host: r, trafficPolicy: {loadBalancer: {consistentHash: {}}}}`, "consistentHash: no hash key", func(t *testing.T, p *Policy) {
			if p.LB.Algorithm != RingHash || p.LB.Hash.Kind != HashNone {
				t.Errorf("lb %+v", p.LB)
			}
		}},
		{"duplicate port", `{host: r, trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}, {port: {number: 80}, loadBalancer: {simple: ROUND_ROBIN}}]}}`,
			"portLevelSettings[1].port.number: port 80 is set again", func(t *testing.T, p *Policy) {
				if p.LB.Algorithm != Random {
					t.Errorf("algorithm %v, want the first entry's", p.LB.Algorithm)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, probs := Compile(decodeDRs(t, "metadata: {name: w, namespace: default}\nspec: "+tt.spec), Options{})
			if len(probs.Errors) > 0 {
				t.Fatalf("errors: %v", probs.Errors)
			}
			if !slicesContain(probs.Warnings, "DestinationRule default/w: ", tt.want) {
				t.Errorf("warnings %q, want one containing %q", probs.Warnings, tt.want)
			}
			pol := p.For("r.default.svc.cluster.local", "default", 80)
			if pol.Rule != "default/w" {
				t.Errorf("the rule does not apply: %q", pol.Rule)
			}
			if tt.check != nil {
				tt.check(t, pol)
			}
		})
	}
}

func TestWorkloadSelectorSkipped(t *testing.T) {
	p, probs := Compile(decodeDRs(t, `
metadata: {name: sel, namespace: default}
spec: {host: reviews, workloadSelector: {matchLabels: {app: x}}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`), Options{})
	if len(probs.Errors) > 0 || !slicesContain(probs.Warnings, "DestinationRule default/sel: ", "spec.workloadSelector: not applied at a waypoint") {
		t.Errorf("problems %+v", probs)
	}
	if got := p.For(reviews, "default", 80).Rule; got != "" {
		t.Errorf("rule %q applies", got)
	}
}

func TestTrafficDistribution(t *testing.T) {
	p := mustCompile(t, `
metadata: {name: od, namespace: default}
spec: {host: reviews, trafficPolicy: {outlierDetection: {}}}
---
metadata: {name: own, namespace: default}
spec: {host: ratings, trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: false}}}}`, Options{})
	svc := &discovery.Service{Name: "reviews", Namespace: "default", Hostname: reviews, TrafficDistribution: "PreferClose"}
	got := p.ForService(svc, 80).Locality
	want := LocalityPolicy{Enabled: true, FailoverPriority: []string{LabelNetwork, LabelRegion, LabelZone}, Force: true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PreferClose: %+v, want %+v", got, want)
	}
	if got := p.For(reviews, "default", 80).Locality; got.Force {
		t.Errorf("the cached policy changed: %+v", got)
	}
	own := &discovery.Service{Name: "ratings", Namespace: "default", Hostname: "ratings.default.svc.cluster.local", TrafficDistribution: "PreferClose"}
	if got := p.ForService(own, 80).Locality; got.Enabled || got.Force {
		t.Errorf("the rule's own locality setting should win: %+v", got)
	}
}

func slicesContain(list []string, prefix, sub string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) && strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
