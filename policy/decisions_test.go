package policy

import (
	"net/netip"
	"reflect"
	"sync"
	"testing"
)

// rememberSet has every kind of policy a decision reports: DENY, ALLOW, AUDIT and dry run.
func rememberSet(tb testing.TB) *Applied {
	tb.Helper()
	s := set(tb, ap("api", "shadow", `  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["web"]}}]}]`)+ap("api", "audit", `spec:
  action: AUDIT
  rules: [{to: [{operation: {ports: ["8080"]}}]}]`)+ap("api", "deny-plain", `spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]`)+ap("api", "allow-web", `spec:
  rules: [{from: [{source: {namespaces: ["web"]}}], to: [{operation: {ports: ["8080"]}}]}]`), false)
	return s.For("api", nil)
}

// A remembered decision is the one the policies give, for every input and every time.
func TestEvaluateRemembers(t *testing.T) {
	a := rememberSet(t)
	inputs := []struct {
		name string
		in   *Input
	}{
		{"allowed, audited, dry-run deny", conn(frontend, "198.18.0.10")},
		{"same client again", conn(frontend, "198.18.0.10")},
		{"same client, other port", withPort(conn(frontend, "198.18.0.10"), 9090)},
		{"no ALLOW matches", conn(backend, "198.18.0.10")},
		{"plaintext denied", conn("", "198.18.0.10")},
		{"plaintext from elsewhere", conn("", "198.18.0.99")},
	}
	for _, tc := range inputs {
		want := a.evaluate(tc.in)
		for i := range 3 {
			if got := a.Evaluate(tc.in); !reflect.DeepEqual(got, want) {
				t.Errorf("%s, call %d: %+v, want %+v", tc.name, i, got, want)
			}
		}
	}
	if n := len(a.decisions); n != len(inputs)-1 {
		t.Errorf("%d decisions remembered, want %d", n, len(inputs)-1)
	}
	// HTTP inputs vary per request: never remembered.
	in := conn(frontend, "198.18.0.10")
	in.HTTP = &Request{Method: "GET", Path: "/"}
	if got, want := a.Evaluate(in), a.evaluate(in); !reflect.DeepEqual(got, want) {
		t.Errorf("HTTP: %+v, want %+v", got, want)
	}
	if n := len(a.decisions); n != len(inputs)-1 {
		t.Errorf("an HTTP decision was remembered: %d", n)
	}
}

// A caller changing a decision changes nobody else's.
func TestEvaluateDetached(t *testing.T) {
	a := rememberSet(t)
	in := conn(frontend, "198.18.0.10")
	d := a.Evaluate(in)
	if len(d.Audit) != 1 || d.DryRun == nil {
		t.Fatalf("want an audit and a dry-run decision: %+v", d)
	}
	d.Audit[0], d.DryRun.Allow, d.DryRun.Policy = "changed", true, "changed"
	if again := a.Evaluate(in); again.Audit[0] != "api/audit" || again.DryRun.Allow || again.DryRun.Policy != "api/shadow" {
		t.Errorf("remembered decision changed by a caller: %+v, dry run %+v", again, again.DryRun)
	}
}

// Inputs that never repeat keep the memory bounded and the decisions right.
func TestEvaluateBounded(t *testing.T) {
	a := rememberSet(t)
	for i := range 3*maxDecisions + 7 {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		in := conn("", ip.String())
		if d := a.Evaluate(in); d.Allow || d.Policy != "api/deny-plain" {
			t.Fatalf("%s: %+v", ip, d)
		}
		if n := len(a.decisions); n > maxDecisions {
			t.Fatalf("%d decisions remembered, bound %d", n, maxDecisions)
		}
	}
}

// Concurrent connections to one workload share its decisions (run with -race).
func TestEvaluateConcurrent(t *testing.T) {
	a := rememberSet(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2 * maxDecisions {
				p := frontend
				if (g+i)%3 == 0 {
					p = backend
				}
				in := conn(p, netip.AddrFrom4([4]byte{10, 2, byte(g), byte(i)}).String())
				if d := a.Evaluate(in); d.Allow != (p == frontend) {
					t.Errorf("%s from %s: %+v", p, in.SrcIP, d)
					return
				}
			}
		})
	}
	wg.Wait()
}
