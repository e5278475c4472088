package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
	"github.com/ambitmesh/ambit/ztunnel"
)

// ambitctl runs ambitctl in the node's network namespace, where the ztunnel admin
// endpoint is on its default address; it returns stdout and stderr and the error.
func ambitctl(t *testing.T, n *netns.Node, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := n.Command(ctx, filepath.Join(m.Bin, "ambitctl"), args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// `ambitctl policy explain` on the destination's node says what real connections
// then get, and names the deciding policy; `policy list` shows what is in force.
func TestPolicyExplain(t *testing.T) {
	requireMesh(t)
	node2 := m.Topo.Nodes[1]
	m.ApplyPolicies(t, "deny-all.yaml", authz("deny-all", echoDenyAll), "mesh/deny-all")
	m.ApplyPolicies(t, "allow-client.yaml", authz("allow-client", allowClient), "mesh/allow-client")

	explain := func(args ...string) string {
		t.Helper()
		out, errOut, err := ambitctl(t, node2, append([]string{"policy", "explain"}, args...)...)
		if err != nil {
			t.Fatalf("ambitctl policy explain %v: %v\n%s", args, err, errOut)
		}
		return out
	}
	verdict := func(out string) string { return strings.SplitN(out, "\n", 2)[0] }

	out := explain("-from", "mesh/client", "-to", "mesh/echo-a:8080")
	if got, want := verdict(out), "ALLOW by AuthorizationPolicy mesh/allow-client rule 0"; got != want {
		t.Errorf("client -> echo-a:8080: %q, want %q\n%s", got, want, out)
	}
	if !strings.Contains(out, "principal  cluster.local/ns/mesh/sa/client") || !strings.Contains(out, "path       inbound (mutual_tls)") {
		t.Errorf("client -> echo-a:8080 names no HBONE principal:\n%s", out)
	}
	echoOK(t, client, podAddr(echoA))

	out = explain("-from", local.IP.String(), "-to", podAddr(echoA).String())
	if got := verdict(out); !strings.HasPrefix(got, "DENY: no ALLOW policy matched (applying: ") {
		t.Errorf("local -> echo-a:8080: %q, want DENY: no ALLOW policy matched\n%s", got, out)
	}
	// The refusal the real connection gets at node2 carries the same decision.
	raw := explain("-json", "-from", "mesh/local", "-to", "mesh/echo-a:8080")
	var e ztunnel.Explanation
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		t.Fatalf("explain -json: %v\n%s", err, raw)
	}
	if e.Allowed || e.Decision == nil {
		t.Fatalf("local -> echo-a:8080 explained as %+v", e)
	}
	dialFails(t, local, podAddr(echoA))
	waitLog(t, "node2", "connection refused", "src.addr="+local.IP.String()+":", e.Decision.Text)

	out = explain("-from", "plain/plainc", "-to", "mesh/echo-a:8080")
	if got := verdict(out); !strings.HasPrefix(got, "DENY: no ALLOW policy matched") || !strings.Contains(out, "principal  none (plaintext)") {
		t.Errorf("plainc -> echo-a:8080: %q, want a plaintext DENY\n%s", got, out)
	}
	dialFails(t, plainc, podAddr(echoA))

	list, errOut, err := ambitctl(t, node2, "policy", "list", "mesh/echo-a")
	if err != nil {
		t.Fatalf("policy list: %v\n%s", err, errOut)
	}
	for _, want := range []string{"mesh/deny-all", "mesh/allow-client", "selector app=echo"} {
		if !strings.Contains(list, want) {
			t.Errorf("policy list lacks %q:\n%s", want, list)
		}
	}

	// The source's node does not decide: it says so.
	_, errOut, err = ambitctl(t, m.Topo.Nodes[0], "policy", "explain", "-from", "mesh/client", "-to", "mesh/echo-a:8080")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(errOut, `runs on node "node2"`) {
		t.Errorf("explain on node1 for echo-a: %v %q, want an error naming node2", err, errOut)
	}
}
