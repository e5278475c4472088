// Package netns builds throw-away network topologies in Linux network namespaces for
// end-to-end tests, benchmarks and the demo: an underlay bridge joining "nodes", each node
// with routed pods (a /32 per pod behind a host-side veth, default route via 169.254.1.1
// with a static neighbour, as Calico and Cilium do). Addresses are in 198.18.0.0/15:
// node i is 198.18.0.<i> on its "eth0", its pod j is 198.18.<i>.<10+j>. IPv6 is off
// unless a test calls Topology.EnableIPv6 (addresses from 2001:db8::/32 only).
//
// Everything runs inside a private network namespace entered by EnterPrivate, so nothing a
// test does can reach the host network. Code that must run in a namespace goes through
// NS.Do (or Listen, Dial, Command, Sysctl), which uses a dedicated OS thread that is
// discarded afterwards.
//
//	func TestMain(m *testing.M) { netns.EnterPrivate(); os.Exit(m.Run()) }
//
//	func TestX(t *testing.T) {
//		topo := netns.New(t, netns.Options{}) // 2 nodes x 2 pods; skips when not root
//		a, b := topo.Nodes[0].Pods[0], topo.Nodes[1].Pods[0]
//		srv := b.ServeEcho(t, ":8080")
//		c, err := a.Dial(ctx, "tcp", netip.AddrPortFrom(b.IP, srv.Addr.Port()).String())
//		cap, err := topo.Underlay.Tcpdump(ctx, "br0", filepath.Join(t.TempDir(), "wire.pcap"))
//		p, err := topo.Start(topo.Nodes[0].Command(ctx, ztunnelBin, "-config", cfg))
//	}
package netns
