package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// The wire between nodes carries only HBONE on :15008, negotiated as TLS 1.3, and a
// marker sent by a pod never appears in clear. This runs first, so every HBONE
// connection it uses is set up while tcpdump watches.
func TestWireIsEncrypted(t *testing.T) {
	requireMesh(t)
	// Traffic over HBONE connections pooled by earlier tests would show no handshake,
	// and the capture could not prove TLS 1.3.
	waitPoolEmpty(t, m.Topo.Nodes[0])
	marker := []byte("AMBIT-PLAINTEXT-MARKER-7f3c9e")
	file := captureUnderlay(t, func() {
		for _, addr := range []netip.AddrPort{podAddr(echoA), echoVIP, podAddr(echoB)} {
			payload := bytes.Repeat(marker, 64)
			got, err := roundTrip(context.Background(), client, addr, payload)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("client -> %s: err %v, %d bytes back", addr, err, len(got))
			}
		}
	})
	v, err := pcap.VerifyWire(file, marker)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wire: %s", v)
	if !v.Encrypted() {
		t.Fatalf("wire is not proven encrypted: %s", v)
	}
}

// The same check must be able to fail: plaintext between non-enrolled pods shows the marker.
func TestWireCheckDetectsPlaintext(t *testing.T) {
	requireMesh(t)
	marker := []byte("AMBIT-CLEAR-MARKER-44aa")
	file := captureUnderlay(t, func() {
		if _, err := roundTrip(context.Background(), plainc, podAddr(plains), marker); err != nil {
			t.Fatal(err)
		}
	})
	v, err := pcap.VerifyWire(file, marker)
	if err != nil {
		t.Fatal(err)
	}
	if v.Encrypted() || !v.MarkerVisible || len(v.NotHBONE) == 0 {
		t.Fatalf("plaintext not detected: %s", v)
	}
}

func TestCrossNodeByPodIP(t *testing.T) {
	requireMesh(t)
	echoOK(t, client, podAddr(echoA))
	if got := lastPeer(t, "echo-a"); got != client.IP {
		t.Fatalf("echo-a saw source %s, want the client pod %s", got, client.IP)
	}
}

func TestServiceVIPRoundRobin(t *testing.T) {
	requireMesh(t)
	before := map[string]int{"echo-a": len(echoSrv["echo-a"].Peers()), "echo-b": len(echoSrv["echo-b"].Peers())}
	for i := 0; i < 6; i++ {
		echoOK(t, client, echoVIP)
	}
	for name, n := range before {
		peers := echoSrv[name].Peers()[n:]
		if len(peers) == 0 {
			t.Fatalf("%s got no connection through the VIP", name)
		}
		for _, p := range peers {
			if p.Addr() != client.IP {
				t.Fatalf("%s saw source %s, want the client pod %s", name, p.Addr(), client.IP)
			}
		}
	}
}

func TestSameNode(t *testing.T) {
	requireMesh(t)
	echoOK(t, client, podAddr(local))
	if got := lastPeer(t, "local"); got != client.IP {
		t.Fatalf("local saw source %s, want %s", got, client.IP)
	}
	d, err := m.Dump(context.Background(), m.Topo.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Certificates) == 0 {
		t.Fatalf("node1 holds no certificates: %+v", d)
	}
}

func TestLargeTransfer(t *testing.T) {
	requireMesh(t)
	sha256Transfer(t, client, podAddr(echoA), 128<<20)
}

func TestConcurrentConnections(t *testing.T) {
	requireMesh(t)
	const n = 500
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			addr := podAddr(echoA)
			if i%2 == 1 {
				addr = echoVIP
			}
			msg := []byte(fmt.Sprintf("conn %d", i))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			got, err := roundTrip(ctx, client, addr, msg)
			if err == nil && !bytes.Equal(got, msg) {
				err = fmt.Errorf("echoed %q", got)
			}
			if err != nil {
				errs <- fmt.Errorf("conn %d to %s: %w", i, addr, err)
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	var failed []string
	for err := range errs {
		failed = append(failed, err.Error())
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d connections failed; first: %s", len(failed), n, failed[0])
	}
}

// A pod outside the mesh is not captured: its traffic reaches the server directly (the
// server sees the pod's own address) and ztunnel records no connection for it.
func TestNotEnrolledNotCaptured(t *testing.T) {
	requireMesh(t)
	echoOK(t, plainc, podAddr(plains))
	if got := lastPeer(t, "plains"); got != plainc.IP {
		t.Fatalf("plains saw %s, want plainc %s", got, plainc.IP)
	}
	d, err := m.Dump(context.Background(), m.Topo.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Captured[plainc.IP.String()]; ok {
		t.Fatalf("plainc is captured: %v", d.Captured)
	}
	if _, ok := d.Captured[client.IP.String()]; !ok {
		t.Fatalf("client is not captured: %v", d.Captured)
	}
}

// An enrolled pod reaches a pod outside the mesh by passthrough, from the node's address.
func TestPassthroughToNonMesh(t *testing.T) {
	requireMesh(t)
	echoOK(t, client, podAddr(plains))
	if got := lastPeer(t, "plains"); got != m.Topo.Nodes[0].IP {
		t.Fatalf("plains saw %s, want node1's address %s (passthrough)", got, m.Topo.Nodes[0].IP)
	}
}

// A pod outside the mesh reaching an enrolled pod goes through the inbound plaintext
// listener and keeps its source address.
func TestInboundPlaintext(t *testing.T) {
	requireMesh(t)
	echoOK(t, plainc, podAddr(echoA))
	if got := lastPeer(t, "echo-a"); got != plainc.IP {
		t.Fatalf("echo-a saw %s, want plainc %s", got, plainc.IP)
	}
	metrics, err := m.Metrics(context.Background(), m.Topo.Nodes[1])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, `direction="inbound_plaintext"`) {
		t.Fatalf("no inbound_plaintext connection in node2 metrics")
	}
}

// A CONNECT refused by the destination's ztunnel after the pod's first bytes were already
// sent (early data) counts as a refusal on the source node, not as an ordinary connection.
func TestEarlyRefusalCounted(t *testing.T) {
	requireMesh(t)
	refused := func() float64 {
		t.Helper()
		metrics, err := m.Metrics(context.Background(), m.Topo.Nodes[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(metrics, "\n") {
			if v, ok := strings.CutPrefix(line, `ambit_connections_refused_total{direction="outbound"} `); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("metric line %q: %v", line, err)
				}
				return f
			}
		}
		return 0
	}
	before := refused()
	// Nothing listens on port 1 of echo-a: node2's ztunnel answers 503.
	dialFails(t, client, netip.AddrPortFrom(echoA.IP, 1))
	deadline := time.Now().Add(5 * time.Second)
	for refused() < before+1 {
		if time.Now().After(deadline) {
			t.Fatalf("ambit_connections_refused_total{direction=\"outbound\"} on node1 stayed at %v", before)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Byte counts cover all a connection carried, both ways and on both nodes, including
// the first bytes the source node sent in the same write as the CONNECT request.
func TestBytesCounted(t *testing.T) {
	requireMesh(t)
	// total sums metric over node's series for connections from client to echo-a.
	total := func(node int, metric string) float64 {
		t.Helper()
		metrics, err := m.Metrics(context.Background(), m.Topo.Nodes[node])
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, line := range strings.Split(metrics, "\n") {
			if !strings.HasPrefix(line, metric+"{") || !strings.Contains(line, `source_workload="client"`) ||
				!strings.Contains(line, `destination_workload="echo-a"`) {
				continue
			}
			f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum += f
		}
		return sum
	}
	type figure struct {
		node   int
		metric string
	}
	figures := []figure{
		{0, "istio_tcp_sent_bytes_total"}, {0, "istio_tcp_received_bytes_total"},
		{1, "istio_tcp_sent_bytes_total"}, {1, "istio_tcp_received_bytes_total"},
	}
	before := make([]float64, len(figures))
	for i, f := range figures {
		before[i] = total(f.node, f.metric)
	}
	// Each connection writes at once after connecting, so its bytes are mostly there
	// by the time node1 sends the request; some connections may take the other path.
	const conns, each = 30, 3000
	const size = conns * each
	payload := bytes.Repeat([]byte("b"), each)
	for range conns {
		if err := writeFirstEcho(client, podAddr(echoA), payload); err != nil {
			t.Fatal(err)
		}
	}
	// Counters move when each side's connection ends, just after the client's.
	deadline := time.Now().Add(5 * time.Second)
	for i, f := range figures {
		for {
			d := total(f.node, f.metric) - before[i]
			if d == size {
				break
			}
			if d > size || time.Now().After(deadline) {
				t.Fatalf("node%d %s rose by %v, want %d", f.node+1, f.metric, d, size)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Each of those connections logged a line on each node, none of them dropped.
	for node := range 2 {
		if d := metricValue(t, node, "ambit_log_lines_dropped_total"); d != 0 {
			t.Fatalf("node%d: ambit_log_lines_dropped_total %v, want 0", node+1, d)
		}
	}
}

// writeFirstEcho writes payload as soon as the connection is up, then reads it back.
func writeFirstEcho(from *netns.Pod, addr netip.AddrPort, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, payload) {
		return fmt.Errorf("echo: %d bytes back (%v)", len(got), err)
	}
	return nil
}

// Enrollment follows the model live: opting the client pod out stops its capture (its
// traffic to a non-mesh pod then arrives with its own address, not the node's), opting
// it back in restores it. No pod is restarted.
func TestLiveEnrollment(t *testing.T) {
	requireMesh(t)
	w := m.Model.Workload("client")
	w.Labels["istio.io/dataplane-mode"] = "none"
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	waitCaptured(t, client.IP, false)
	echoOK(t, client, podAddr(plains))
	if got := lastPeer(t, "plains"); got != client.IP {
		t.Fatalf("after opt-out plains saw %s, want the client pod %s (not captured)", got, client.IP)
	}

	delete(w.Labels, "istio.io/dataplane-mode")
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	waitCaptured(t, client.IP, true)
	echoOK(t, client, podAddr(plains))
	if got := lastPeer(t, "plains"); got != m.Topo.Nodes[0].IP {
		t.Fatalf("after opt-in plains saw %s, want node1 %s (passthrough via ztunnel)", got, m.Topo.Nodes[0].IP)
	}
	echoOK(t, client, podAddr(echoA))
}

func waitCaptured(t *testing.T, ip netip.Addr, want bool) {
	t.Helper()
	if err := m.WaitCaptured(context.Background(), m.Topo.Nodes[0], ip, want); err != nil {
		t.Fatal(err)
	}
}

// A model change that does not concern a connection leaves it alone.
func TestModelChangeKeepsConnections(t *testing.T) {
	requireMesh(t)
	c, err := client.Dial(context.Background(), "tcp", podAddr(echoA).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping := func(msg string) {
		t.Helper()
		if err := mesh.EchoOn(c, msg); err != nil {
			t.Fatal(err)
		}
	}
	ping("before")
	before := make(map[string]uint64)
	for _, n := range m.Topo.Nodes[:2] {
		d, err := m.Dump(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		before[n.Name] = d.ModelVersion
	}
	w := m.Model.Workload("local")
	w.Labels["version"] = "v2"
	if err := m.Apply(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { delete(w.Labels, "version"); _ = m.Apply() })
	for _, n := range m.Topo.Nodes[:2] {
		deadline := time.Now().Add(15 * time.Second)
		for {
			d, err := m.Dump(context.Background(), n)
			if err == nil && d.ModelVersion > before[n.Name] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not apply the model change", n.Name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ping("after the model changed")
}

// SIGTERM drains: ztunnel exits cleanly within its drain timeout, and the node fails
// closed until it is back.
func TestGracefulStop(t *testing.T) {
	requireMesh(t)
	node1 := m.Topo.Nodes[0]
	p := m.Ztunnel(node1.Name)
	if p == nil {
		t.Fatal("no ztunnel on node1")
	}
	if err := m.StopZtunnel(node1); err != nil {
		t.Fatal(err)
	}
	if code := p.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("ztunnel exit code %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	if !strings.Contains(p.Output(), "draining connections") {
		t.Fatalf("no drain logged:\n%s", p.Output())
	}
	dialFails(t, client, podAddr(echoA))
	if err := m.StartZtunnel(context.Background(), node1); err != nil {
		t.Fatal(err)
	}
	echoOK(t, client, podAddr(echoA))
}
