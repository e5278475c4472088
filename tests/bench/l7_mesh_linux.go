//go:build !nomesh

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/discovery"
	"github.com/ambitmesh/ambit/internal/serve"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The L7 case's waypoint: mesh/waypoint (service account waypoint) in node3's first pod,
// for service l7 (HTTP, VIP l7VIP:80) whose only endpoint is node2's third pod.
const (
	l7WaypointName = "waypoint"
	l7WaypointSA   = "waypoint"
	l7Service      = "l7"
	l7GatewayFile  = "l7-waypoint.yaml"
)

// l7VIP is the bound service's address (the policy case's synthetic addresses are
// elsewhere, in 198.19.64.0/18 and 198.19.128.0/24).
var l7VIP = netip.AddrPortFrom(mesh.VIP(0), 80)

// l7FaultVIP is the fault case's service (l7f) address.
var l7FaultVIP = netip.AddrPortFrom(mesh.VIP(1), 80)

// l7Model is benchModel on three nodes of three pods: node3's first pod is the
// waypoint's, its others are outside the mesh (the other hops run in its second);
// node2's third pod, the waypoint's backend, sits behind the waypoint (its ztunnel
// accepts it only from there), so the other paths use node2's first pod.
func l7Model(t *netns.Topology) *mesh.Model {
	md := benchModel(t)
	wp, backend := t.Nodes[2].Pods[0], t.Nodes[1].Pods[2]
	for i := range md.Workloads {
		w := &md.Workloads[i]
		switch {
		case w.Name == wp.Name:
			w.ServiceAccount = l7WaypointSA
			w.Labels = map[string]string{discovery.LabelGatewayName: l7WaypointName}
		case w.Node == t.Nodes[2].Name:
			w.Namespace = "plain"
		}
	}
	md.Services = append(md.Services, mesh.Service{
		Name: l7Service, Namespace: "mesh", VIPs: []netip.Addr{l7VIP.Addr()},
		Ports:    []mesh.ServicePort{{Port: l7VIP.Port(), TargetPort: l7BackendPort, Name: "http"}},
		Selector: map[string]string{"app": backend.Name},
		Labels:   map[string]string{discovery.LabelUseWaypoint: l7WaypointName},
	})
	// The fault case's service: three endpoints on two nodes, bound to the waypoint.
	for _, p := range faultPods(t) {
		w := md.Workload(p.Name)
		labels := map[string]string{l7FaultService: "yes"}
		for k, v := range w.Labels {
			labels[k] = v
		}
		w.Labels = labels
	}
	md.Services = append(md.Services, mesh.Service{
		Name: l7FaultService, Namespace: "mesh", VIPs: []netip.Addr{l7FaultVIP.Addr()},
		Ports:    []mesh.ServicePort{{Port: l7FaultVIP.Port(), TargetPort: l7FaultPort, Name: "http"}},
		Selector: map[string]string{l7FaultService: "yes"},
		Labels:   map[string]string{discovery.LabelUseWaypoint: l7WaypointName},
	})
	return md
}

// faultPods are the fault case's endpoints; the last one fails.
func faultPods(t *netns.Topology) []*netns.Pod {
	return []*netns.Pod{t.Nodes[0].Pods[2], t.Nodes[1].Pods[3], t.Nodes[1].Pods[2]}
}

// l7FaultRule is the fault case's outlier detection (locality off: the waypoint's
// zone would otherwise decide).
const l7FaultRule = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: l7f, namespace: mesh}
spec:
  host: l7f
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: false}}
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
`

const l7FaultFile = "l7-fault-rule.yaml"

// setFaultRule applies (od) or removes the fault case's DestinationRule and waits until
// the waypoint's cluster for l7f has it, sending requests from the client meanwhile.
func setFaultRule(ctx context.Context, m *mesh.Mesh, f *l7Fabric, od bool) error {
	want := ""
	if od {
		want = "mesh/" + l7FaultService
		if err := m.WritePolicies(l7FaultFile, l7FaultRule); err != nil {
			return err
		}
	} else if err := m.RemovePolicies(l7FaultFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/config_dump", serve.PortAdmin)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, _ = getText(ctx, f.client.NS, "http://"+l7FaultVIP.String()+l7Path, 2*time.Second)
		text, err := getText(ctx, f.wpPod.NS, url, 2*time.Second)
		if err == nil {
			var d struct {
				Clusters []struct {
					Name string `json:"name"`
					Rule string `json:"destinationRule"`
				} `json:"clusters"`
			}
			if json.Unmarshal([]byte(text), &d) == nil {
				for _, c := range d.Clusters {
					if strings.HasSuffix(c.Name, "|"+l7FaultService+".mesh.svc.cluster.local") && c.Rule == want {
						return nil
					}
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the waypoint did not apply DestinationRule %q for %s: %v", want, l7FaultService, err)
		}
	}
}

// newL7Mesh declares the waypoint (its Gateway) and returns the L7 case's pods and hooks;
// the waypoint starts when the L7 case is set up.
func newL7Mesh(m *mesh.Mesh) (*l7Fabric, error) {
	if err := m.WritePolicies(l7GatewayFile, mesh.WaypointGateway("mesh", l7WaypointName)); err != nil {
		return nil, err
	}
	n1, n2, n3 := m.Topo.Nodes[0], m.Topo.Nodes[1], m.Topo.Nodes[2]
	f := &l7Fabric{
		client: n1.Pods[0], server: n2.Pods[0], wpBackend: n2.Pods[2], wpPod: n3.Pods[0], hopPod: n3.Pods[1],
		vip: l7VIP, faultPods: faultPods(m.Topo), faultVIP: l7FaultVIP,
	}
	f.setFaultRule = func(ctx context.Context, od bool) error { return setFaultRule(ctx, m, f, od) }
	f.startWaypoint = func(ctx context.Context, extra []string) (int, error) {
		cmd := f.wpPod.Command(context.Background(), filepath.Join(m.Bin, "waypoint"),
			append(m.WaypointArgs(f.wpPod, "mesh", l7WaypointName), extra...)...)
		proc, err := m.Topo.Start(cmd)
		if err != nil {
			return 0, fmt.Errorf("start waypoint: %w", err)
		}
		client := mesh.HTTPClient(f.wpPod.NS)
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", serve.PortReadiness, serve.ReadyPath))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return proc.Pid(), nil
				}
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return 0, fmt.Errorf("waypoint not ready: %v\n%s", err, proc.Output())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	f.waypointRequests = func(ctx context.Context) (float64, error) {
		text, err := getText(ctx, f.wpPod.NS, fmt.Sprintf("http://127.0.0.1:%d/metrics", serve.PortMetrics), 5*time.Second)
		if err != nil {
			return 0, err
		}
		return sumMetric(text, "istio_requests_total", `response_code="200"`), nil
	}
	f.profileWaypoint = func(ctx context.Context, d time.Duration, file string) error {
		secs := max(1, int(d.Round(time.Second)/time.Second))
		url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", serve.PortAdmin, secs)
		text, err := getText(ctx, f.wpPod.NS, url, d+30*time.Second)
		if err != nil {
			return fmt.Errorf("cpu profile of the waypoint: %w", err)
		}
		return os.WriteFile(file, []byte(text), 0o644)
	}
	return f, nil
}

// getText GETs url from namespace ns.
func getText(ctx context.Context, ns *netns.NS, url string, timeout time.Duration) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}
