package ctl

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/ztunnel"
)

// explainAdmin is a fake node answering /policy/explain from answers, keyed by the
// query it must receive ("src dst" or "src dst plaintext"); other queries get the
// 400 ztunnel gives an unknown workload.
func explainAdmin(t *testing.T, answers map[string]ztunnel.Explanation) string {
	t.Helper()
	return fakeAdmin(t, map[string]http.HandlerFunc{"/policy/explain": func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		key := q.Get("src") + " " + q.Get("dst")
		if q.Get("plaintext") == "true" {
			key += " plaintext"
		}
		e, ok := answers[key]
		if !ok {
			http.Error(w, `src "`+q.Get("src")+`": no such workload`, http.StatusBadRequest)
			return
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Error(err)
		}
		w.Write(b)
	}})
}

func TestPolicyExplain(t *testing.T) {
	allowed := ztunnel.Explanation{
		Path: "inbound", Src: "198.18.1.10", SrcWorkload: "mesh/client", Principal: "cluster.local/ns/mesh/sa/client",
		Dst: "198.18.2.10:8080", DstWorkload: "mesh/echo-a", Security: "mutual_tls", MTLSMode: "PERMISSIVE", Allowed: true,
		Decision: &ztunnel.DecisionInfo{Allow: true, Kind: "AuthorizationPolicy", Policy: "mesh/allow-client", Rule: 0,
			Audit:  []string{"mesh/audit-all"},
			DryRun: &ztunnel.DecisionInfo{Kind: "AuthorizationPolicy", Policy: "mesh/shadow", Rule: 1}},
		Policies: []string{"AuthorizationPolicy mesh/deny-all", "AuthorizationPolicy mesh/allow-client"},
	}
	noMatch := ztunnel.Explanation{
		Path: "inbound_plaintext", Src: "198.18.1.11", SrcWorkload: "mesh/local", Dst: "198.18.2.10:8080",
		DstWorkload: "mesh/echo-a", Security: "none", MTLSMode: "PERMISSIVE",
		Decision: &ztunnel.DecisionInfo{Rule: -1, Reason: "no ALLOW policy matched (applying: mesh/deny-all)"},
	}
	strict := ztunnel.Explanation{
		Path: "inbound_plaintext", Src: "198.18.9.9", Dst: "198.18.2.10:8080", DstWorkload: "mesh/echo-a",
		Security: "none", MTLSMode: "STRICT", MTLSModeBy: "mesh/strict",
		Decision: &ztunnel.DecisionInfo{Kind: "PeerAuthentication", Policy: "mesh/strict", Rule: -1,
			Reason: "mTLS STRICT on port 8080: plaintext refused"},
	}
	refused := ztunnel.Explanation{Path: "local", Src: "198.18.2.20", SrcWorkload: "mesh/client-2",
		Dst: "198.18.2.10:8080", DstWorkload: "mesh/echo-a", Security: "mutual_tls",
		Refused: "503 Service Unavailable: identity spiffe://cluster.local/ns/mesh/sa/client: not held"}
	addr := explainAdmin(t, map[string]ztunnel.Explanation{
		"mesh/client 198.18.2.10:8080":          allowed,
		"mesh/local mesh/echo-a:8080 plaintext": noMatch,
		"198.18.9.9 198.18.2.10:8080":           strict,
		"client-2 198.18.2.10:8080":             refused,
	})
	rawAllowed, _ := json.Marshal(allowed)
	run := func(args ...string) []string { return append([]string{"policy", "explain", "-admin", addr}, args...) }
	runCommands(t, []cmdCase{
		{name: "allowed by a rule", args: run("-from", "mesh/client", "-to", "198.18.2.10:8080"), stdout: []string{
			"ALLOW by AuthorizationPolicy mesh/allow-client rule 0\n",
			"from       mesh/client 198.18.1.10", "principal  cluster.local/ns/mesh/sa/client",
			"to         mesh/echo-a 198.18.2.10:8080", "path       inbound (mutual_tls)", "mTLS       PERMISSIVE (Istio's default)",
			"dry run    DENY by AuthorizationPolicy mesh/shadow rule 1", "audit      mesh/audit-all",
			"policies   AuthorizationPolicy mesh/deny-all, AuthorizationPolicy mesh/allow-client"}},
		{name: "plaintext denied by default", args: run("--from", "mesh/local", "--to", "mesh/echo-a:8080", "--plaintext"), stdout: []string{
			"DENY: no ALLOW policy matched (applying: mesh/deny-all)\n", "principal  none (plaintext)", "policies   none"}},
		{name: "denied by STRICT", args: run("-from", "198.18.9.9", "-to", "198.18.2.10:8080"), stdout: []string{
			"DENY by PeerAuthentication mesh/strict: mTLS STRICT on port 8080: plaintext refused\n",
			"from       198.18.9.9 (outside the mesh)", "mTLS       STRICT (PeerAuthentication mesh/strict)"}},
		{name: "refused before policy", args: run("-from", "client-2", "-to", "198.18.2.10:8080"), stdout: []string{
			"REFUSED before policy: 503 Service Unavailable: identity"}},
		{name: "json", args: run("-json", "-from", "mesh/client", "-to", "198.18.2.10:8080"), exactStdout: string(rawAllowed)},
		{name: "node says no", args: run("-from", "mesh/nope", "-to", "198.18.2.10:8080"), code: 1,
			stderr: `400 Bad Request: src "mesh/nope": no such workload`},
		{name: "no destination", args: run("-from", "mesh/client"), code: 1, stderr: "usage: ambitctl policy explain"},
		{name: "no subcommand", args: []string{"policy"}, code: 1, stderr: "usage: ambitctl policy explain"},
		{name: "unknown subcommand", args: []string{"policy", "frob"}, code: 1, stderr: `unknown policy command "frob"`},
	})
}

func TestPolicyList(t *testing.T) {
	dump, err := json.Marshal(ztunnel.ConfigDump{Node: "node2", Policies: []ztunnel.DumpPolicy{
		{Kind: "PeerAuthentication", Name: "mesh/echo-port", Scope: "selector app=echo", Mode: "UNSET",
			Ports: map[uint16]string{9090: "STRICT", 10000: "DISABLE"}},
		{Kind: "AuthorizationPolicy", Name: "mesh/deny-all", Scope: "selector app=echo", Action: "ALLOW"},
		{Kind: "AuthorizationPolicy", Name: "mesh/shadow", Scope: "namespace", Action: "DENY", DryRun: true, Rules: 1,
			Warnings: []string{"spec.rules[0].to[0].operation.methods: L7 field ignored"}},
		{Kind: "AuthorizationPolicy", Name: "mesh/bad", Scope: "namespace", Action: "DENY", Invalid: "policies.yaml:9: bad CIDR"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// The workload list, as ztunnel renders it.
	dump = []byte(strings.Replace(string(dump), `"workloads":null`, `"workloads":[
		{"name":"echo-a","namespace":"mesh","node":"node2","ips":["198.18.2.10"],"local":true,
		 "policies":["PeerAuthentication mesh/echo-port","AuthorizationPolicy mesh/deny-all","AuthorizationPolicy mesh/shadow","AuthorizationPolicy mesh/bad"]},
		{"name":"plain","namespace":"plain","node":"node2","ips":["198.18.2.12"],"local":true},
		{"name":"client","namespace":"mesh","node":"node1","ips":["198.18.1.10"]}]`, 1))
	addr := admin(t, 200, string(dump))
	list := func(args ...string) []string { return append([]string{"policy", "list", "-admin", addr}, args...) }
	header := "WORKLOAD     KIND                 POLICY          SCOPE              ACTION  MODE"
	echoRows := []string{
		"mesh/echo-a  PeerAuthentication   mesh/echo-port  selector app=echo  -       UNSET (9090=STRICT,10000=DISABLE)",
		"mesh/echo-a  AuthorizationPolicy  mesh/deny-all   selector app=echo  ALLOW   -",
		"mesh/echo-a  AuthorizationPolicy  mesh/shadow     namespace          DENY    -",
		"dry run; warning: spec.rules[0].to[0].operation.methods: L7 field ignored",
		"mesh/echo-a  AuthorizationPolicy  mesh/bad        namespace          DENY    -",
		"invalid: policies.yaml:9: bad CIDR",
	}
	runCommands(t, []cmdCase{
		{name: "every local workload", args: list(), stdout: append([]string{header,
			"plain/plain  -                    -               -                  -       -",
			"no policy: allowed, mTLS PERMISSIVE"}, echoRows...)},
		{name: "one workload by name", args: list("echo-a"), stdout: echoRows},
		{name: "one workload by IP", args: list("198.18.2.12"), stdout: []string{"plain/plain", "no policy"}},
		{name: "workload of another node", args: list("mesh/client"), code: 1,
			stderr: `mesh/client runs on node "node1", not "node2": ask that node's ztunnel`},
		{name: "unknown workload", args: list("mesh/nope"), code: 1, stderr: `no workload "mesh/nope" on node "node2"`},
		{name: "two workloads", args: list("a", "b"), code: 1, stderr: "usage: ambitctl policy"},
	})
	// Only local workloads are listed.
	var out, errOut strings.Builder
	if code := Main(list(), &out, &errOut); code != 0 || strings.Contains(out.String(), "mesh/client") {
		t.Errorf("exit %d, listed a workload of another node:\n%s", code, out.String())
	}
}
