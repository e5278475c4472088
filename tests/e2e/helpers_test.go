package e2e

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// roundTrip sends payload from a pod, half-closes, and returns what came back.
func roundTrip(ctx context.Context, from *netns.Pod, addr netip.AddrPort, payload []byte) ([]byte, error) {
	return mesh.RoundTrip(ctx, from, addr, payload)
}

// echoOK checks a round trip through the mesh returns exactly what was sent.
func echoOK(t *testing.T, from *netns.Pod, addr netip.AddrPort) {
	t.Helper()
	if err := mesh.Echo(context.Background(), from, addr); err != nil {
		t.Fatal(err)
	}
}

func podAddr(p *netns.Pod) netip.AddrPort { return netip.AddrPortFrom(p.IP, echoPort) }

// lastPeer is the source address the named echo server saw last.
func lastPeer(t *testing.T, name string) netip.Addr {
	t.Helper()
	peers := echoSrv[name].Peers()
	if len(peers) == 0 {
		t.Fatalf("echo server %s saw no connection", name)
	}
	return peers[len(peers)-1].Addr()
}

// captureUnderlay records the wire between nodes for the duration of fn.
func captureUnderlay(t *testing.T, fn func()) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "underlay.pcap")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := m.Topo.Underlay.Tcpdump(ctx, "br0", file, "tcp")
	if err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	fn()
	if err := c.Stop(); err != nil {
		t.Fatalf("stop tcpdump: %v", err)
	}
	return file
}

// metricValue reads the unlabelled metric name from the node's ztunnel.
func metricValue(t *testing.T, node int, name string) float64 {
	t.Helper()
	metrics, err := m.Metrics(context.Background(), m.Topo.Nodes[node])
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("node%d exports no %s", node+1, name)
	return 0
}

// waitPoolEmpty waits until the node's ztunnel has closed every pooled HBONE
// connection (they close poolIdle after their last stream).
func waitPoolEmpty(t *testing.T, n *netns.Node) {
	t.Helper()
	deadline := time.Now().Add(poolIdle + 10*time.Second)
	for {
		d, err := m.Dump(context.Background(), n)
		if err != nil {
			t.Fatalf("config_dump of %s: %v", n.Name, err)
		}
		if conns, _ := d.Pool["connections"].(float64); conns == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still pools HBONE connections %s after their idle timeout: %v", n.Name, poolIdle+10*time.Second, d.Pool)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sha256Transfer streams n random bytes through the mesh to an echo server and checks
// that what returns hashes the same.
func sha256Transfer(t *testing.T, from *netns.Pod, addr netip.AddrPort, n int64) {
	t.Helper()
	if err := mesh.Transfer(context.Background(), from, addr, n); err != nil {
		t.Fatal(err)
	}
}

// dialFails asserts that a connection from the pod cannot be made or carries nothing.
func dialFails(t *testing.T, from *netns.Pod, addr netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	got, err := roundTrip(ctx, from, addr, []byte("must not arrive"))
	if err == nil && len(got) > 0 {
		t.Fatalf("%s -> %s: connection carried data %q; want failure", from.Name, addr, got)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
