package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The waypoint of these tests: mesh/waypoint, run in node3's third pod (node3 has no
// ztunnel: a waypoint pod is never captured), for service "web" (HTTP on echo-a and
// echo-b, port 8081).
const (
	webPort    = 8081
	waypointSA = "waypoint"
)

var webVIP = netip.AddrPortFrom(mesh.VIP(1), 80)

// withWaypoint declares the waypoint and its pod, binds service web to it, serves HTTP
// on the web pods (answering with the pod's name and the client address it saw) and
// runs the waypoint, all undone at cleanup. It returns the waypoint's pod.
func withWaypoint(t *testing.T, extra ...mesh.Service) (*netns.Pod, *serverLog) {
	t.Helper()
	seen := &serverLog{}
	for _, p := range []*netns.Pod{echoA, echoB} {
		l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, webPort).String())
		if err != nil {
			t.Fatal(err)
		}
		name := p.Name
		srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			seen.add(seenRequest{Pod: name, Path: r.URL.Path})
			fmt.Fprintf(rw, "pod=%s from=%s path=%s", name, r.RemoteAddr, r.URL.Path)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
	wpPod := runWaypoint(t, func(md *mesh.Model) {
		md.Services = append(md.Services, boundService("web", webVIP, mesh.ServicePort{Name: "http", TargetPort: webPort},
			map[string]string{"app": "echo"}))
		md.Services = append(md.Services, extra...)
	})
	return wpPod, seen
}

// keepAlive is an HTTP client of a pod that sends all its requests over one connection.
func keepAlive(from *netns.Pod) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: from.DialContext, MaxConnsPerHost: 1}}
}

// get sends GET path to addr from pod on a connection of its own.
func get(from *netns.Pod, addr netip.AddrPort, path string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: from.DialContext, DisableKeepAlives: true}}
	return getWith(c, addr, path)
}

func getWith(c *http.Client, addr netip.AddrPort, path string) (int, string, error) {
	resp, err := c.Get("http://" + addr.String() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Traffic to a service bound to a waypoint goes through it, per request balanced over
// the endpoints, and the server sees the client's address; nothing but TLS crosses the
// wire between the three nodes; a mesh client's direct connection to a pod behind the
// waypoint is refused; with the waypoint stopped nothing is delivered.
func TestWaypointHTTP(t *testing.T) {
	requireMesh(t)
	wpPod, seen := withWaypoint(t)
	var pods []string
	hc := keepAlive(client)
	wire := captureUnderlay(t, func() {
		deadline := time.Now().Add(20 * time.Second)
		for len(pods) < 10 {
			code, body, err := getWith(hc, webVIP, fmt.Sprintf("/r%d", len(pods)))
			if err != nil || code != 200 {
				if time.Now().After(deadline) {
					t.Fatalf("GET through the waypoint: %d %q %v\n%s", code, body, err, m.Logs())
				}
				time.Sleep(200 * time.Millisecond)
				continue
			}
			if !strings.Contains(body, "from="+client.IP.String()+":") {
				t.Errorf("the server saw %q, want the client's address %s", body, client.IP)
			}
			pods = append(pods, strings.Fields(body)[0])
		}
	})
	if !slices.Contains(pods, "pod="+echoA.Name) || !slices.Contains(pods, "pod="+echoB.Name) {
		t.Errorf("requests of one connection reached %v, want both endpoints (balanced per request)", pods)
	}
	if err := mesh.WaitOutput(m.Waypoint(wpPod.Name), `msg=request`, "src.addr="+client.IP.String()+":", "response_code=200"); err != nil {
		t.Error(err)
	}
	pkts, err := pcap.ReadFile(wire)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		if p.Proto == pcap.ProtoTCP && p.Src.Port() != 15008 && p.Dst.Port() != 15008 {
			t.Fatalf("plain TCP between nodes: %s", p)
		}
		if bytes.Contains(p.Payload, []byte("GET /r")) || bytes.Contains(p.Payload, []byte("pod=")) {
			t.Fatalf("HTTP in clear on the wire: %s", p)
		}
	}

	// A direct connection from another mesh identity to a pod behind the waypoint.
	if code, body, err := get(local, netip.AddrPortFrom(echoA.IP, webPort), "/direct"); err == nil || seen.find("", "/direct") != nil {
		t.Errorf("direct request to a pod behind the waypoint answered %d %q", code, body)
	}

	if err := m.StopWaypoint(wpPod.Name); err != nil {
		t.Fatal(err)
	}
	if code, body, err := get(client, webVIP, "/stopped"); err == nil {
		t.Errorf("with the waypoint stopped the request was answered %d %q", code, body)
	}
	if seen.find("", "/stopped") != nil {
		t.Error("delivered around the stopped waypoint")
	}
}
