package e2e

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/pcap"
	"github.com/ambitmesh/ambit/tests/mesh"
	"github.com/ambitmesh/ambit/tests/netns"
)

// IPv6 is not captured yet, so an enrolled pod's IPv6 is dropped at its veth: it cannot
// open a connection, nor answer one, and tcpdump between the nodes sees none of its
// packets, while pods outside the mesh talk IPv6 across the same wire.
func TestIPv6NeverInClear(t *testing.T) {
	requireMesh(t)
	m.Topo.EnableIPv6(t)
	const port = 9600
	addr := func(p *netns.Pod) netip.AddrPort { return netip.AddrPortFrom(netns.PodIP6(p), port) }
	for _, p := range []*netns.Pod{plains, client} {
		e, err := p.StartEcho(addr(p).String())
		if err != nil {
			t.Fatalf("IPv6 echo in %s: %v", p.Name, err)
		}
		t.Cleanup(func() { e.Close() })
	}
	var plainErr, outErr, inErr error
	wire := captureUnderlay(t, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		plainErr = mesh.Echo(ctx, plainc, addr(plains))
		refused := func(from *netns.Pod, to netip.AddrPort) error {
			short, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := roundTrip(short, from, to, []byte("must not pass"))
			return err
		}
		outErr, inErr = refused(client, addr(plains)), refused(plains, addr(client))
	})
	if plainErr != nil {
		t.Fatalf("IPv6 between pods outside the mesh: %v", plainErr)
	}
	if outErr == nil {
		t.Error("an enrolled pod's IPv6 connection got through")
	}
	if inErr == nil {
		t.Error("an IPv6 connection to an enrolled pod got through")
	}
	pkts, err := pcap.ReadFile(wire)
	if err != nil {
		t.Fatal(err)
	}
	if len(pcap.Filter(pkts, pcap.Involving(netns.PodIP6(plainc)))) == 0 {
		t.Fatal("tcpdump saw no IPv6 from the pod outside the mesh: the capture proves nothing")
	}
	mesh6 := netns.PodIP6(client)
	if leaked := pcap.Filter(pkts, func(p pcap.Packet) bool { return p.Src.Addr() == mesh6 }); len(leaked) > 0 {
		t.Errorf("the enrolled pod's IPv6 crossed the wire: %v", leaked)
	}
	if len(pcap.Filter(pkts, pcap.Involving(mesh6))) == 0 {
		t.Error("tcpdump saw no SYN to the enrolled pod's IPv6 address")
	}
}
