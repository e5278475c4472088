package route

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/ambitmesh/ambit/tests/gamma"
)

// The mesh conformance tests (tests/gamma: the conformance module's manifests, our
// expectations) at the route-table level; tests/e2e runs them against a waypoint.

func conformanceDir(tb testing.TB) string { return gamma.Dir(tb) }

// conformanceServices resolves the Services of conformance/mesh/manifests.yaml.
func conformanceServices(tb testing.TB, dir string) Services {
	tb.Helper()
	svcs := map[string]ServiceInfo{}
	for _, s := range gamma.Services(tb, dir) {
		info := ServiceInfo{Namespace: s.Namespace, Name: s.Name}
		for _, p := range s.Spec.Ports {
			info.Ports = append(info.Ports, ServicePort{Name: p.Name, Port: uint16(p.Port)})
		}
		svcs[s.Namespace+"/"+s.Name] = info
	}
	return func(ns, name string) (ServiceInfo, bool) {
		s, ok := svcs[ns+"/"+name]
		return s, ok
	}
}

func TestMeshConformance(t *testing.T) {
	dir := conformanceDir(t)
	svcs := conformanceServices(t, dir)
	for _, tt := range gamma.Tests() {
		t.Run(tt.Name, func(t *testing.T) {
			tab, sts := Compile(decodeRoutes(t, gamma.Manifest(t, dir, tt.Manifest)), nil, svcs, nil)
			requireAccepted(t, sts)
			for i, c := range tt.Cases {
				if err := checkMeshCase(tab, c); err != nil {
					t.Errorf("case %d %s: %v", i, c, err)
				}
			}
		})
	}
}

func checkMeshCase(tab *Table, c gamma.Case) error {
	c = c.WithDefaults()
	_, q, _ := strings.Cut(c.Target, "?")
	r := req(c.Method, c.Path(), q, c.Headers...)
	r.Host, r.Port = c.Svc, c.Port
	rs := tab.Lookup(gamma.Namespace, c.Svc, c.Port)
	if rs == nil {
		// No route on this port: the waypoint forwards to the Service itself.
		if c.Backend != c.Svc || len(c.RespHeaders) > 0 || c.Code != 0 {
			return errors.New("no route attached")
		}
		return nil
	}
	rule, ok := rs.Match(r)
	if !ok {
		if c.Backend != "404" {
			return fmt.Errorf("no match, want %s", c.Backend)
		}
		return nil
	}
	red := rule.ApplyRequest(r)
	if c.Code != 0 {
		if red == nil {
			return fmt.Errorf("no redirect, want %d", c.Code)
		}
		return c.CheckRedirect(red.StatusCode, red.Location)
	}
	if red != nil {
		return fmt.Errorf("unexpected redirect %+v", red)
	}
	if c.Backend == "404" {
		return fmt.Errorf("matched %s rule %d, want 404", rule.Route, rule.Index)
	}
	b, ok := rule.Pick(rand.Uint64())
	if !ok || b.Invalid != nil || b.Name != c.Backend {
		return fmt.Errorf("backend %+v, want %s", b, c.Backend)
	}
	b.ApplyRequest(r.Header)
	if err := c.CheckUpstream(r.Path, r.Header); err != nil {
		return err
	}
	resp := http.Header{}
	b.ApplyResponse(resp)
	rule.ApplyResponse(resp)
	return c.CheckResponse(resp)
}

// TestMeshConformanceWeight is MeshHTTPRouteWeight (70/30 on echo-v1/echo-v2,
// upstream tolerance 5 points over 500 requests), on 10,000 random values.
func TestMeshConformanceWeight(t *testing.T) {
	dir := conformanceDir(t)
	tab, _ := Compile(decodeRoutes(t, gamma.Manifest(t, dir, "httproute-weight.yaml")), nil, conformanceServices(t, dir), nil)
	rule, ok := tab.Lookup("gateway-conformance-mesh", "echo", 80).Match(req("GET", "/", ""))
	if !ok {
		t.Fatal("no match")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	got := map[string]int{}
	for range 10000 {
		b, _ := rule.Pick(rng.Uint64())
		got[b.Name]++
	}
	v1 := float64(got["echo-v1"]) / 10000
	if v1 < 0.65 || v1 > 0.75 || got["echo-v1"]+got["echo-v2"] != 10000 {
		t.Errorf("distribution %v, want 70/30", got)
	}
	if !reflect.DeepEqual(rule.Timeouts, Timeouts{}) {
		t.Errorf("timeouts %+v", rule.Timeouts)
	}
}
