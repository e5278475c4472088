package discovery

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
)

// drManifest is a good DestinationRule of each served version, and a policy beside
// them that must load as before.
const drManifest = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: apps
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s}
      http: {http1MaxPendingRequests: "10"}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 1m30s
      baseEjectionTime: 30s
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings.apps.svc.cluster.local
  exportTo: ["."]
status: {observedGeneration: 1}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: details, namespace: apps}
spec:
  host: details
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: session, ttl: 0s}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: apps}
spec: {}
`

func TestParseDestinationRules(t *testing.T) {
	m, err := parseManifests([]policyFile{{name: "m.yaml", data: []byte(drManifest)}}, "", DefaultWaypointClass)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.trafficProblems) != 0 || len(m.policyProblems) != 0 {
		t.Fatalf("problems: traffic %q, policy %q; want none", m.trafficProblems, m.policyProblems)
	}
	if n := len(m.policies.AuthorizationPolicies()); n != 1 {
		t.Errorf("%d AuthorizationPolicies, want 1", n)
	}
	var got []string
	for _, dr := range m.destinationRules {
		got = append(got, dr.Namespace+"/"+dr.Name+" "+dr.Spec.Host)
	}
	if want := "apps/reviews reviews, default/ratings ratings.apps.svc.cluster.local, apps/details details"; strings.Join(got, ", ") != want {
		t.Fatalf("DestinationRules %q, want %q", strings.Join(got, ", "), want)
	}
	tp := m.destinationRules[0].Spec.TrafficPolicy
	switch {
	case tp.GetLoadBalancer().GetSimple() != networkingv1alpha3.LoadBalancerSettings_LEAST_REQUEST:
		t.Errorf("loadBalancer %v", tp.GetLoadBalancer())
	case tp.GetConnectionPool().GetTcp().GetMaxConnections() != 100 || tp.GetConnectionPool().GetTcp().GetConnectTimeout().AsDuration() != 2*time.Second:
		t.Errorf("tcp connection pool %v", tp.GetConnectionPool().GetTcp())
	case tp.GetConnectionPool().GetHttp().GetHttp1MaxPendingRequests() != 10:
		t.Errorf("http connection pool %v", tp.GetConnectionPool().GetHttp())
	// Istio reads durations in Go's form, which protojson alone would refuse.
	case tp.GetOutlierDetection().GetInterval().AsDuration() != 90*time.Second || tp.GetOutlierDetection().GetConsecutive_5XxErrors().GetValue() != 5:
		t.Errorf("outlier detection %v", tp.GetOutlierDetection())
	}
	if s := m.destinationRules[0].Spec.Subsets; len(s) != 1 || s[0].Labels["version"] != "v1" {
		t.Errorf("subsets %v", s)
	}
	if h := m.destinationRules[2].Spec.TrafficPolicy.GetLoadBalancer().GetConsistentHash().GetHttpCookie(); h.GetName() != "session" {
		t.Errorf("consistent hash cookie %v", h)
	}

	// The model carries them as declared.
	s, err := parse("mesh.yaml", []byte("{}"), EnrollmentOptions{}, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.DestinationRules) != 3 || s.DestinationRules[0] != m.destinationRules[0] || len(s.TrafficProblems) != 0 {
		t.Errorf("snapshot DestinationRules %v, problems %q", s.DestinationRules, s.TrafficProblems)
	}
}

// Each bad object is left out with its problems; the good one beside it loads.
func TestParseDestinationRuleProblems(t *testing.T) {
	const good = `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: good, namespace: apps}
spec: {host: good}
`
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "unknown field in the spec",
			yaml: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: apps}
spec:
  host: bad
  trafficPolicy:
    loadBalancer:
      simpel: ROUND_ROBIN
`,
			want: []string{`m.yaml:8: DestinationRule apps/bad: spec.trafficPolicy.loadBalancer.simpel: unknown field`},
		},
		{
			name: "unknown top-level and metadata fields",
			yaml: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namspace: apps}
spce: {host: bad}
`,
			want: []string{
				`m.yaml:3: DestinationRule default/bad: metadata: unknown field "namspace"`,
				`m.yaml:4: DestinationRule default/bad: spce: unknown field`,
			},
		},
		{
			name: "values of the wrong type",
			yaml: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: apps}
spec:
  host: [bad]
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: lots, connectTimeout: 2 seconds}
    outlierDetection: {consecutive5xxErrors: true}
    loadBalancer: {simple: FASTEST}
  subsets: {name: v1}
`,
			want: []string{
				`m.yaml:5: DestinationRule apps/bad: spec.host: expected a string, got a list`,
				`m.yaml:8: DestinationRule apps/bad: spec.trafficPolicy.connectionPool.tcp.maxConnections: expected a number, got "lots"`,
				`m.yaml:8: DestinationRule apps/bad: spec.trafficPolicy.connectionPool.tcp.connectTimeout: expected a duration such as 10s, 1.5s or 1m30s, got "2 seconds"`,
				`m.yaml:9: DestinationRule apps/bad: spec.trafficPolicy.outlierDetection.consecutive5xxErrors: expected a number, got the boolean true`,
				`m.yaml:10: DestinationRule apps/bad: spec.trafficPolicy.loadBalancer.simple: "FASTEST" is not one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST`,
				`m.yaml:11: DestinationRule apps/bad: spec.subsets: expected a list, got a mapping`,
			},
		},
		{
			name: "two members of a oneof",
			yaml: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad, namespace: apps}
spec:
  host: bad
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      consistentHash: {useSourceIp: true}
`,
			want: []string{`m.yaml:9: DestinationRule apps/bad: spec.trafficPolicy.loadBalancer.consistentHash: only one of simple and consistentHash may be set (simple is, line 8)`},
		},
		{
			name: "metadata missing, invalid or of another version",
			yaml: `apiVersion: networking.istio.io/v2
kind: DestinationRule
metadata: {name: Bad_Name, namespace: apps}
spec: {host: bad}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
spec: {host: bad}
`,
			want: []string{
				`m.yaml:1: DestinationRule apps/Bad_Name: apiVersion: "networking.istio.io/v2" is not networking.istio.io/v1, v1beta1, v1alpha3`,
				`m.yaml:3: DestinationRule apps/Bad_Name: metadata.name: "Bad_Name" is not a valid DNS-1123 subdomain (at most 253 characters of lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)`,
				`m.yaml:6: DestinationRule default/(no name): metadata: must be set (name, namespace)`,
			},
		},
		{
			name: "the same object twice",
			yaml: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: good, namespace: apps}
spec: {host: other}
`,
			want: []string{`m.yaml:6: DestinationRule apps/good: already declared at m.yaml:1; left out`},
		},
		{
			name: "other kinds of the group are not supported",
			yaml: `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: apps}
spec: {hosts: [reviews]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {}
`,
			want: []string{
				`m.yaml:1: VirtualService apps/reviews: not supported: of networking.istio.io Ambit reads only DestinationRule`,
				`m.yaml:6: ServiceEntry default/ext: not supported: of networking.istio.io Ambit reads only DestinationRule`,
				`m.yaml:10: Sidecar default/(no name): not supported: of networking.istio.io Ambit reads only DestinationRule`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.yaml + good
			if strings.HasPrefix(tc.name, "the same object") {
				data = strings.TrimPrefix(good, "---\n") + "---\n" + tc.yaml
			}
			m, err := parseManifests([]policyFile{{name: "m.yaml", data: []byte(data)}}, "", DefaultWaypointClass)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(m.trafficProblems, "\n"); got != strings.Join(tc.want, "\n") {
				t.Errorf("problems:\n got:\n%s\nwant:\n%s", got, strings.Join(tc.want, "\n"))
			}
			if len(m.destinationRules) != 1 || m.destinationRules[0].Name != "good" || m.destinationRules[0].Spec.Host != "good" {
				t.Errorf("DestinationRules %v, want apps/good alone", m.destinationRules)
			}
			// networking.istio.io is not the policies' business.
			if len(m.policyProblems) != 0 {
				t.Errorf("policy problems %q, want none", m.policyProblems)
			}
		})
	}
}

// The Kubernetes source decodes API server objects (JSON) the same way.
func TestDecodeDestinationRule(t *testing.T) {
	dr, err := DecodeDestinationRule([]byte(`{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule",
		"metadata":{"name":"r","namespace":"apps","resourceVersion":"7","creationTimestamp":"2026-01-01T00:00:00Z"},
		"spec":{"host":"r","trafficPolicy":{"connectionPool":{"tcp":{"connectTimeout":"250ms"}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if dr.Name != "r" || dr.ResourceVersion != "7" || dr.Spec.TrafficPolicy.GetConnectionPool().GetTcp().GetConnectTimeout().AsDuration() != 250*time.Millisecond {
		t.Errorf("decoded %v", dr)
	}
	dr, err = DecodeDestinationRule([]byte(`{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule",
		"metadata":{"name":"r","namespace":"apps"},"spec":{"host":"r","trafficPolicy":{"tls":{"mode":"SIMPLE","sni":1}}}}`))
	if got, want := errString(err), `spec.trafficPolicy.tls.sni: expected a string, got the number 1`; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	if dr.Namespace != "apps" || dr.Name != "r" {
		t.Errorf("the object of a bad DestinationRule is %s/%s, want apps/r", dr.Namespace, dr.Name)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// An edit of a DestinationRule reaches the store live; a bad one is logged and left
// out while the model still loads.
func TestFileSourceDestinationRules(t *testing.T) {
	dir := t.TempDir()
	path, manifests := dir+"/mesh.yaml", dir+"/manifests"
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	dr := func(name, lb string) string {
		return "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: " + name +
			", namespace: default}\nspec: {host: " + name + ", trafficPolicy: {loadBalancer: {simple: " + lb + "}}}\n"
	}
	writeFile(t, path, model("a"))
	writeFile(t, manifests+"/dr.yaml", dr("reviews", "ROUND_ROBIN"))
	rs := startSource(t, path, FileSourceConfig{PolicyPath: manifests})
	lbOf := func(s *Snapshot) string {
		if len(s.DestinationRules) != 1 {
			return fmt.Sprintf("%d rules", len(s.DestinationRules))
		}
		return s.DestinationRules[0].Spec.TrafficPolicy.GetLoadBalancer().GetSimple().String()
	}
	rs.waitFor(t, "ROUND_ROBIN", func(s *Snapshot) bool { return lbOf(s) == "ROUND_ROBIN" })
	replaceFile(t, manifests+"/dr.yaml", dr("reviews", "RANDOM")+"---\n"+dr("ratings", "FASTEST"))
	s := rs.waitFor(t, "RANDOM", func(s *Snapshot) bool { return lbOf(s) == "RANDOM" })
	want := manifests + `/dr.yaml:9: DestinationRule default/ratings: spec.trafficPolicy.loadBalancer.simple: "FASTEST" is not one of`
	if len(s.TrafficProblems) != 1 || !strings.HasPrefix(s.TrafficProblems[0], want) {
		t.Errorf("traffic problems %q, want one starting %q", s.TrafficProblems, want)
	}
	rs.waitLog(t, "Istio traffic object left out: "+want)
}
