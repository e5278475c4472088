package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/gamma"
	"github.com/ambitmesh/ambit/tests/mesh"
)

// The Gateway API mesh conformance tests against the running waypoint: the
// conformance module's Services (echo, echo-v1 on echo-a, echo-v2 on echo-b; their
// HTTP ports on the test servers' port) and each test's HTTPRoutes, moved from
// namespace gateway-conformance-mesh to mesh, where the waypoint is; every request of
// each test sent from the client pod through ztunnel and the waypoint.
func TestWaypointConformance(t *testing.T) {
	requireMesh(t)
	dir := gamma.Dir(t)
	log := &serverLog{}
	serveL7(t, echoA, log)
	serveL7(t, echoB, log)
	pods := map[string]string{echoA.Name: "echo-v1", echoB.Name: "echo-v2"}
	vips := map[string]netip.Addr{}
	runWaypoint(t, func(md *mesh.Model) {
		for name, version := range map[string]string{"echo-a": "v1", "echo-b": "v2"} {
			md.Workload(name).Labels = map[string]string{"app": "echo", "version": version}
		}
		// The conformance echo takes the place of the model's own.
		md.Services = slices.DeleteFunc(md.Services, func(s mesh.Service) bool { return s.Namespace == "mesh" && s.Name == "echo" })
		for i, s := range gamma.Services(t, dir) {
			vip := mesh.VIP(7 + i)
			vips[s.Name] = vip
			svc := mesh.Service{Name: s.Name, Namespace: "mesh", VIPs: []netip.Addr{vip}, Selector: s.Spec.Selector,
				Labels: map[string]string{discovery.LabelUseWaypoint: "waypoint"}}
			for _, p := range s.Spec.Ports {
				sp := mesh.ServicePort{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(p.TargetPort.IntValue())}
				switch {
				case p.Name == "http" || p.Name == "http-alt":
					sp.TargetPort = webPort
				case sp.TargetPort == 0: // unset: the Service port, as in Kubernetes
					sp.TargetPort = sp.Port
				}
				svc.Ports = append(svc.Ports, sp)
			}
			md.Services = append(md.Services, svc)
		}
	})
	t.Cleanup(func() { _ = m.RemovePolicies(routesFile) })

	for _, tt := range gamma.Tests() {
		t.Run(tt.Name, func(t *testing.T) {
			doc := strings.ReplaceAll(gamma.Manifest(t, dir, tt.Manifest), "namespace: "+gamma.Namespace, "namespace: mesh")
			if err := m.WritePolicies(routesFile, doc); err != nil {
				t.Fatal(err)
			}
			// Eventually consistent, as the suite's own checks: the waypoint takes the
			// new routes within a model refresh.
			var errs []error
			for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(250 * time.Millisecond) {
				errs = errs[:0]
				for i, c := range tt.Cases {
					if err := checkLive(c, vips, pods); err != nil {
						errs = append(errs, fmt.Errorf("case %d %s: %w", i, c, err))
					}
				}
				if len(errs) == 0 || time.Now().After(deadline) {
					break
				}
			}
			if len(errs) > 0 {
				t.Fatal(errors.Join(errs...))
			}
		})
	}
}

// checkLive sends c's request through the waypoint and checks the answer.
func checkLive(c gamma.Case, vips map[string]netip.Addr, pods map[string]string) error {
	c = c.WithDefaults()
	var hdr []string
	for _, h := range c.Headers {
		k, v, _ := strings.Cut(h, ":")
		hdr = append(hdr, k, strings.TrimSpace(v))
	}
	a, err := send(client, netip.AddrPortFrom(vips[c.Svc], c.Port), c.Method, c.Target, hdr...)
	if err != nil {
		return err
	}
	switch {
	case c.Code != 0:
		return c.CheckRedirect(a.code, a.header.Get("Location"))
	case c.Backend == "404":
		if a.code != 404 || a.seen != nil {
			return fmt.Errorf("answer %d from %v, want 404 from the waypoint", a.code, a.seen)
		}
		return nil
	case a.code != 200 || a.seen == nil:
		return fmt.Errorf("answer %d %q, want 200 from %s", a.code, a.body, c.Backend)
	}
	if got := pods[a.seen.Pod]; c.Backend != "echo" && got != c.Backend {
		return fmt.Errorf("answered by %s (%s), want %s", a.seen.Pod, got, c.Backend)
	}
	if err := c.CheckUpstream(a.seen.Path, a.seen.Header); err != nil {
		return err
	}
	return c.CheckResponse(a.header)
}
