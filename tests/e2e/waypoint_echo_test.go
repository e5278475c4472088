package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// Istio's own echo server (istio.io/istio/pkg/test/echo) behind the waypoint, versions
// v1 on echo-a and v2 on echo-b, HTTP on 8090 and gRPC on 7070; its client in the
// client pod. The server reports the version that answered and the client address it saw.
func TestWaypointIstioEcho(t *testing.T) {
	requireMesh(t)
	bins, err := mesh.IstioEchoBinaries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for p, version := range map[*netns.Pod]string{echoA: "v1", echoB: "v2"} {
		proc, err := m.Topo.Start(p.Command(context.Background(), bins.Server, "--port", "8090", "--grpc", "7070", "--version", version))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = proc.Stop() })
	}
	vip := mesh.VIP(2)
	wpPod, _ := withWaypoint(t, mesh.Service{Name: "istio-echo", Namespace: "mesh", VIPs: []netip.Addr{vip},
		Ports:    []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: 8090}, {Name: "grpc", Port: 7070, TargetPort: 7070}},
		Selector: map[string]string{"app": "echo"}, Labels: map[string]string{discovery.LabelUseWaypoint: "waypoint"}})

	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := client.Command(ctx, bins.Client, args...).CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct{ name, url string }{
		{"HTTP/1.1", fmt.Sprintf("http://%s:80/echo", vip)},
		{"gRPC", fmt.Sprintf("grpc://%s:7070", vip)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out string
			var err error
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(300 * time.Millisecond) {
				out, err = run(tc.url, "--count", "10")
				if err == nil || time.Now().After(deadline) {
					break
				}
			}
			if err != nil {
				t.Fatalf("istio echo client %s: %v\n%s", tc.url, err, out)
			}
			for _, want := range []string{"ServiceVersion=v1", "ServiceVersion=v2", "IP=" + client.IP.String()} {
				if !strings.Contains(out, want) {
					t.Errorf("%s: no %q in the echo output (both versions answer, per request; the client's address is seen):\n%s", tc.name, want, out)
				}
			}
		})
	}
	if err := mesh.WaitOutput(m.Waypoint(wpPod.Name), "msg=request", "authority="+vip.String()+":7070", "response_code=200"); err != nil {
		t.Error(err)
	}
}
