package netns

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/pcap"
)

// TestTcpdumpUnroutedNeverLeavesNode captures on a pod's host veth and on the node uplink
// while the pod dials an address outside the topology: the SYN reaches the node, and nothing
// goes out of the uplink.
func TestTcpdumpUnroutedNeverLeavesNode(t *testing.T) {
	topo := New(t, Options{Nodes: 2, PodsPerNode: 1})
	node, pod := topo.Nodes[0], topo.Nodes[0].Pods[0]
	dir := t.TempDir()
	ctx := context.Background()
	vethCap, err := node.Tcpdump(ctx, pod.HostVeth, filepath.Join(dir, "veth.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	upCap, err := node.Tcpdump(ctx, node.Uplink, filepath.Join(dir, "uplink.pcap"), "not", "arp")
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort("198.18.255.1:80")
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if c, err := pod.Dial(dctx, "tcp", dst.String()); err == nil {
		c.Close()
		t.Fatal("dial succeeded")
	}
	// And one flow that does cross the uplink, so an empty uplink capture means something.
	srv := topo.Nodes[1].Pods[0].ServeEcho(t, ":7")
	echoRoundTrip(t, pod.NS, netip.AddrPortFrom(topo.Nodes[1].Pods[0].IP, srv.Addr.Port()), []byte("x"))

	for _, c := range []*Capture{vethCap, upCap} {
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := c.Stop(); !errors.Is(err, ErrStopped) {
			t.Fatalf("second Stop: %v", err)
		}
	}
	vp, err := pcap.ReadFile(vethCap.File)
	if err != nil {
		t.Fatal(err)
	}
	up, err := pcap.ReadFile(upCap.File)
	if err != nil {
		t.Fatal(err)
	}
	toDst := func(p pcap.Packet) bool { return p.Dst == dst }
	if n := len(pcap.Filter(vp, toDst)); n == 0 {
		t.Fatalf("no SYN to %s on the host veth (%d packets)", dst, len(vp))
	}
	if leaked := pcap.Filter(up, pcap.Involving(dst.Addr())); len(leaked) != 0 {
		t.Fatalf("packets to %s left the node: %v", dst, leaked)
	}
	if len(pcap.Connections(up)) != 1 {
		t.Fatalf("uplink connections %v, want the echo flow", pcap.Connections(up))
	}
}

func TestTcpdumpErrorsAndClose(t *testing.T) {
	topo := New(t, Options{Nodes: 1, PodsPerNode: -1})
	if _, err := topo.Nodes[0].Tcpdump(context.Background(), "nosuchif", filepath.Join(t.TempDir(), "x.pcap")); err == nil {
		t.Fatal("tcpdump on a missing interface succeeded")
	}
	c, err := topo.Nodes[0].Tcpdump(context.Background(), "eth0", filepath.Join(t.TempDir(), "y.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Stop after Close: %v, want ErrStopped", err)
	}
	if _, err := pcap.ReadFile(c.File); err != nil {
		t.Fatalf("file after Close: %v", err)
	}
}

func TestTcpdumpContextCancel(t *testing.T) {
	topo := New(t, Options{Nodes: 1, PodsPerNode: -1})
	ctx, cancel := context.WithCancel(context.Background())
	c, err := topo.Nodes[0].Tcpdump(ctx, "eth0", filepath.Join(t.TempDir(), "z.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	<-c.proc.Done()
	if err := c.Stop(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Stop after cancel: %v", err)
	}
}

// TestTcpdumpBulk captures a bulk transfer on the underlay bridge and on "any" of the client
// node (Ethernet and Linux cooked v2), and reassembles it from the files.
func TestTcpdumpBulk(t *testing.T) {
	topo := New(t, Options{Nodes: 2, PodsPerNode: 1})
	a, b := topo.Nodes[0].Pods[0], topo.Nodes[1].Pods[0]
	srv := b.ServeEcho(t, ":9")
	dir := t.TempDir()
	caps := map[string]*Capture{}
	for name, ns := range map[string]*NS{"br0": topo.Underlay, "any": topo.Nodes[0].NS} {
		c, err := ns.Tcpdump(context.Background(), name, filepath.Join(dir, name+".pcap"))
		if err != nil {
			t.Fatal(err)
		}
		caps[name] = c
	}
	const size = 8 << 20
	c, err := a.Dial(context.Background(), "tcp", netip.AddrPortFrom(b.IP, srv.Addr.Port()).String())
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.LimitReader(zeros{}, size))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	n, err := io.Copy(io.Discard, c)
	c.Close()
	if err != nil || n != size {
		t.Fatalf("echoed %d bytes, %v", n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for name, c := range caps {
		err := c.Stop()
		if errors.Is(err, ErrDropped) {
			// A loaded machine may drop; the capture is then incomplete, not wrong.
			t.Logf("%s: %v", name, err)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		pkts, err := pcap.ReadFile(c.File)
		if err != nil {
			t.Fatal(err)
		}
		flow := pcap.Connections(pkts)[0]
		streams := pcap.TCPStreams(pkts)
		if got := len(streams[flow]); got != size {
			t.Fatalf("%s: client stream %d bytes, want %d", name, got, size)
		}
		if got := len(streams[flow.Reverse()]); got != size {
			t.Fatalf("%s: server stream %d bytes, want %d", name, got, size)
		}
		for _, p := range pkts {
			if p.Truncated {
				t.Fatalf("%s: truncated packet %v", name, p)
			}
		}
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
