package ztunnel

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/policy"
)

// explainPolicies select the echo pods: deny by default, allow mesh/client's
// principal, audit everything, a dry-run DENY of mesh/client's address, and
// STRICT mTLS on port 9090.
const explainPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: mesh}
spec:
  selector:
    matchLabels: {app: echo}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: mesh}
spec:
  selector:
    matchLabels: {app: echo}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/mesh/sa/client"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: mesh}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: shadow-deny
  namespace: mesh
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: ["198.18.1.10/32"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo-strict, namespace: mesh}
spec:
  selector:
    matchLabels: {app: echo}
  portLevelMtls:
    9090: {mode: STRICT}
`

// newPolicyNode is node2 of testSnapshot with explainPolicies in force and the
// real authorizer.
func newPolicyNode(tb testing.TB) *testNode {
	tb.Helper()
	seq := 0
	m, probs, err := policy.ParseManifests("policies.yaml", []byte(explainPolicies), &seq)
	if err != nil || len(probs) > 0 {
		tb.Fatalf("policies: %v %v", err, probs)
	}
	n := newTestNode(tb, "node2")
	n.store.Set(testSnapshotWith(tb, policy.NewSet("", m.Authorizations, m.PeerAuthentications)))
	n.authorize = n.authorizePolicy
	return n
}

// TestExplainMatchesConnections: for each path into a local pod, /policy/explain's
// answer is what the real connection then gets (delivered with that decision, or
// refused naming it), and explaining logs nothing.
func TestExplainMatchesConnections(t *testing.T) {
	const (
		allowClient = "allow: AuthorizationPolicy mesh/allow-client rule 0"
		noMatch     = "deny: no ALLOW policy matched (applying: mesh/deny-all, mesh/allow-client)"
		dryDeny     = "deny: AuthorizationPolicy mesh/shadow-deny rule 0"
	)
	tests := []struct {
		name      string
		q         ExplainQuery
		path      string
		src       string
		srcW      string
		principal string
		mode      string
		modeBy    string
		allowed   bool
		decision  string
		dryRun    string
		audit     string
		// real opens the connection the query describes, through its entry point.
		real func(t *testing.T, n *testNode)
	}{
		{"HBONE from another node", ExplainQuery{Src: "mesh/client", Dst: "198.18.2.10:8080"},
			"inbound", "198.18.1.10", "mesh/client", "cluster.local/ns/mesh/sa/client", "PERMISSIVE", "",
			true, allowClient, dryDeny, "mesh/audit-all", func(t *testing.T, n *testNode) {
				s, _ := inboundStream(t, idClient, "198.18.0.1:50000", "198.18.2.10:15008", "198.18.2.10:8080", "198.18.1.10:40000")
				go n.serveHBONE(s)
			}},
		{"same node, by names", ExplainQuery{Src: "client-2", Dst: "mesh/echo-a:9090"},
			"local", "198.18.2.20", "mesh/client-2", "cluster.local/ns/mesh/sa/client", "STRICT", "mesh/echo-strict",
			true, allowClient, allowClient, "mesh/audit-all", func(t *testing.T, n *testNode) {
				c, _ := clientConn(t, "198.18.2.20:40000", "198.18.2.10:9090")
				go n.handleOutbound(context.Background(), c)
			}},
		{"plaintext from a pod outside the mesh", ExplainQuery{Src: "198.18.2.12", Dst: "198.18.2.10:8080"},
			"inbound_plaintext", "198.18.2.12", "plain/plain", "", "PERMISSIVE", "",
			false, noMatch, noMatch, "mesh/audit-all", func(t *testing.T, n *testNode) {
				c, _ := clientConn(t, "198.18.2.12:5000", "198.18.2.10:8080")
				go n.handleInboundPlain(context.Background(), c)
			}},
		{"plaintext from an unknown address", ExplainQuery{Src: "198.18.9.9", Dst: "198.18.2.11:8080"},
			"inbound_plaintext", "198.18.9.9", "", "", "PERMISSIVE", "",
			false, noMatch, noMatch, "mesh/audit-all", func(t *testing.T, n *testNode) {
				c, _ := clientConn(t, "198.18.9.9:5000", "198.18.2.11:8080")
				go n.handleInboundPlain(context.Background(), c)
			}},
		{"plaintext from a mesh pod to a STRICT port", ExplainQuery{Src: "198.18.1.10", Dst: "198.18.2.10:9090", Plaintext: true},
			"inbound_plaintext", "198.18.1.10", "mesh/client", "", "STRICT", "mesh/echo-strict",
			false, "deny: PeerAuthentication mesh/echo-strict (mTLS STRICT on port 9090: plaintext refused)", "", "",
			func(t *testing.T, n *testNode) {
				c, _ := clientConn(t, "198.18.1.10:5000", "198.18.2.10:9090")
				go n.handleInboundPlain(context.Background(), c)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newPolicyNode(t)
			e, err := n.Explain(tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if e.Decision == nil {
				t.Fatalf("no decision: %+v", e)
			}
			dry := "" // PeerAuthentication decides before the AuthorizationPolicies, dry run or not
			if e.Decision.DryRun != nil {
				dry = e.Decision.DryRun.Text
			}
			for _, c := range []struct {
				field     string
				got, want any
			}{
				{"path", e.Path, tt.path},
				{"src", e.Src, tt.src},
				{"src workload", e.SrcWorkload, tt.srcW},
				{"principal", e.Principal, tt.principal},
				{"mtls mode", e.MTLSMode, tt.mode},
				{"mtls mode by", e.MTLSModeBy, tt.modeBy},
				{"allowed", e.Allowed, tt.allowed},
				{"decision", e.Decision.Text, tt.decision},
				{"decision allows", e.Decision.Allow, tt.allowed},
				{"dry run", dry, tt.dryRun},
				{"refused", e.Refused, ""},
				{"audit", strings.Join(e.Decision.Audit, ","), tt.audit},
			} {
				if c.got != c.want {
					t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
				}
			}
			if !slices.Contains(e.Policies, "AuthorizationPolicy mesh/deny-all") {
				t.Errorf("policies %v lack mesh/deny-all", e.Policies)
			}
			if logs := n.logs.String(); logs != "" {
				t.Fatalf("explaining logged:\n%s", logs)
			}
			if d := n.dialed(); len(d) != 0 {
				t.Fatalf("explaining dialed %v", d)
			}

			tt.real(t, n)
			if !tt.allowed {
				n.waitLog(t, msgRefused, "src.addr="+tt.src+":", tt.decision)
				return
			}
			n.pod(t)
			deadline := time.Now().Add(5 * time.Second)
			for {
				conns := n.conns.snapshot()
				if len(conns) == 1 && conns[0].Policy == tt.decision {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("connections %+v, want one decided %q", conns, tt.decision)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestExplainBadQueries(t *testing.T) {
	tests := []struct {
		name    string
		q       ExplainQuery
		wantErr error
		want    string
	}{
		{"no src", ExplainQuery{Dst: "198.18.2.10:8080"}, nil, "src is required"},
		{"unknown src", ExplainQuery{Src: "mesh/nope", Dst: "198.18.2.10:8080"}, errUnknownWorkload, `src "mesh/nope"`},
		{"no dst", ExplainQuery{Src: "mesh/client"}, nil, `dst "": want IP:port`},
		{"dst without port", ExplainQuery{Src: "mesh/client", Dst: "198.18.2.10"}, nil, "want IP:port or namespace/name:port"},
		{"port 0", ExplainQuery{Src: "mesh/client", Dst: "198.18.2.10:0"}, nil, `port "0": want 1-65535`},
		{"port too large", ExplainQuery{Src: "mesh/client", Dst: "198.18.2.10:70000"}, nil, "want 1-65535"},
		{"port by name", ExplainQuery{Src: "mesh/client", Dst: "198.18.2.10:http"}, nil, "want 1-65535"},
		{"unknown dst", ExplainQuery{Src: "mesh/client", Dst: "mesh/nope:8080"}, errUnknownWorkload, `dst "mesh/nope:8080"`},
		{"dst on another node", ExplainQuery{Src: "198.18.2.20", Dst: "mesh/client:8080"}, errNotLocalDest, `runs on node "node1"`},
		{"dst not enrolled", ExplainQuery{Src: "mesh/client", Dst: "198.18.2.12:9000"}, errNotLocalDest, "198.18.2.12"},
		{"dst a service VIP", ExplainQuery{Src: "mesh/client", Dst: "198.19.0.10:80"}, errNotLocalDest, "198.19.0.10"},
	}
	n := newPolicyNode(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := n.Explain(tt.q)
			if err == nil {
				t.Fatal("no error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestWorkloadNamedAmbiguous(t *testing.T) {
	snap, err := discovery.Build(discovery.Input{Workloads: []*discovery.Workload{
		{Name: "api", Namespace: "a"}, {Name: "api", Namespace: "b"},
	}}, discovery.EnrollmentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workloadNamed(snap, "api"); !errors.Is(err, errAmbiguousWorkload) || !strings.Contains(err.Error(), "a/api, b/api") {
		t.Errorf("error %v, want ambiguous naming both", err)
	}
	if _, err := workloadNamed(snap, "a/api"); err == nil || !strings.Contains(err.Error(), "no IP address") {
		t.Errorf("error %v, want no IP address", err)
	}
}

// TestServeExplain: the admin endpoint's answers and errors.
func TestServeExplain(t *testing.T) {
	n := newPolicyNode(t)
	tests := []struct {
		name   string
		method string
		query  url.Values
		code   int
		body   string
	}{
		{"allowed", http.MethodGet, url.Values{"src": {"mesh/client"}, "dst": {"198.18.2.10:8080"}}, http.StatusOK, `"text": "allow: AuthorizationPolicy mesh/allow-client rule 0"`},
		{"plaintext", http.MethodGet, url.Values{"src": {"mesh/client"}, "dst": {"198.18.2.10:8080"}, "plaintext": {"true"}}, http.StatusOK, `"path": "inbound_plaintext"`},
		{"bad plaintext", http.MethodGet, url.Values{"src": {"mesh/client"}, "dst": {"198.18.2.10:8080"}, "plaintext": {"maybe"}}, http.StatusBadRequest, `plaintext "maybe"`},
		{"unknown source", http.MethodGet, url.Values{"src": {"mesh/nope"}, "dst": {"198.18.2.10:8080"}}, http.StatusBadRequest, "no such workload"},
		{"not local", http.MethodGet, url.Values{"src": {"mesh/client"}, "dst": {"198.18.1.10:8080"}}, http.StatusBadRequest, "not an enrolled workload of this node"},
		{"post", http.MethodPost, nil, http.StatusMethodNotAllowed, "use GET"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			n.serveExplain(w, httptest.NewRequest(tt.method, "/policy/explain?"+tt.query.Encode(), nil))
			if w.Code != tt.code || !strings.Contains(w.Body.String(), tt.body) {
				t.Fatalf("%d %s, want %d with %q", w.Code, w.Body, tt.code, tt.body)
			}
			if tt.code == http.StatusOK {
				var e Explanation
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
