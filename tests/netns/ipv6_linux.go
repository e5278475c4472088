package netns

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPv6 addresses, from the documentation range 2001:db8::/32 only: node i is 2001:db8::<i>
// on its uplink, its pod j is 2001:db8:<i>::<10+j>. Pods route everything via
// PodGateway6, a link-local address on their host-side veth.
var (
	UnderlayCIDR6 = netip.MustParsePrefix("2001:db8::/64")
	PodGateway6   = netip.MustParseAddr("fe80::1")
)

// NodeIP6 and PodIP6 are the IPv6 addresses EnableIPv6 gives a node and a pod.
func NodeIP6(n *Node) netip.Addr { return addr6(0, uint16(n.Index)) }
func PodIP6(p *Pod) netip.Addr {
	return addr6(uint16(p.Node.Index), uint16(p.IP.As4()[3]))
}

func addr6(group3, last uint16) netip.Addr {
	a := UnderlayCIDR6.Addr().As16()
	a[4], a[5] = byte(group3>>8), byte(group3)
	a[14], a[15] = byte(last>>8), byte(last)
	return netip.AddrFrom16(a)
}

// EnableIPv6 turns IPv6 on in every node and pod of t and wires it like IPv4: addresses
// as NodeIP6/PodIP6, static neighbours (no neighbour discovery or duplicate detection on
// the paths tests use), routes between nodes' pod prefixes, forwarding on. Cleanup turns
// IPv6 off again, which removes every address, route and neighbour it added.
func (t *Topology) EnableIPv6(tb testing.TB) {
	tb.Helper()
	var nss []*NS
	tb.Cleanup(func() {
		for _, ns := range nss {
			if err := ns.Do(func() error { return ipv6Switch("all", false) }); err != nil {
				tb.Errorf("turn IPv6 off in %s: %v", ns.Name, err)
			}
		}
	})
	macs := map[*Node]net.HardwareAddr{}
	for _, n := range t.Nodes {
		nss = append(nss, n.NS)
		if err := n.Do(func() error { return n.enableIPv6(macs) }); err != nil {
			tb.Fatalf("IPv6 on %s: %v", n.Name, err)
		}
		for _, p := range n.Pods {
			nss = append(nss, p.NS)
			if err := p.Do(p.enableIPv6); err != nil {
				tb.Fatalf("IPv6 in pod %s: %v", p.Name, err)
			}
		}
	}
	for _, n := range t.Nodes {
		if err := n.Do(func() error { return n.routeIPv6(macs) }); err != nil {
			tb.Fatalf("IPv6 routes on %s: %v", n.Name, err)
		}
	}
}

// enableIPv6 runs in n: the uplink's address and MAC (into macs), each pod's veth with
// the gateway address, a neighbour and a route for the pod.
func (n *Node) enableIPv6(macs map[*Node]net.HardwareAddr) error {
	if err := ipv6Switch("all", true); err != nil {
		return err
	}
	if err := sysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
		return err
	}
	ul, err := netlink.LinkByIndex(n.UplinkIfindex)
	if err != nil {
		return err
	}
	macs[n] = ul.Attrs().HardwareAddr
	if err := addAddr6(ul, netip.PrefixFrom(NodeIP6(n), UnderlayCIDR6.Bits())); err != nil {
		return err
	}
	for _, p := range n.Pods {
		veth, err := netlink.LinkByIndex(p.HostIfindex)
		if err != nil {
			return err
		}
		if err := addAddr6(veth, netip.PrefixFrom(PodGateway6, 64)); err != nil {
			return err
		}
		if err := neigh6(p.HostIfindex, PodIP6(p), p.MAC); err != nil {
			return err
		}
		r := &netlink.Route{LinkIndex: p.HostIfindex, Dst: prefixToIPNet(netip.PrefixFrom(PodIP6(p), 128)), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("add route to pod %s: %w", PodIP6(p), err)
		}
	}
	return nil
}

// routeIPv6 runs in n: a neighbour for every other node and a route to its pods.
func (n *Node) routeIPv6(macs map[*Node]net.HardwareAddr) error {
	for _, o := range n.topo.Nodes {
		if o == n {
			continue
		}
		if err := neigh6(n.UplinkIfindex, NodeIP6(o), macs[o]); err != nil {
			return err
		}
		pods := netip.PrefixFrom(addr6(uint16(o.Index), 0), 64)
		r := &netlink.Route{LinkIndex: n.UplinkIfindex, Dst: prefixToIPNet(pods), Gw: NodeIP6(o).AsSlice()}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("add route %s via %s: %w", pods, NodeIP6(o), err)
		}
	}
	return nil
}

// enableIPv6 runs in p: its address and a default route via the gateway.
func (p *Pod) enableIPv6() error {
	if err := ipv6Switch("all", true); err != nil {
		return err
	}
	l, err := netlink.LinkByName(podIfName)
	if err != nil {
		return err
	}
	if err := addAddr6(l, netip.PrefixFrom(PodIP6(p), 128)); err != nil {
		return err
	}
	if err := neigh6(l.Attrs().Index, PodGateway6, p.HostMAC); err != nil {
		return err
	}
	r := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		Gw:        PodGateway6.AsSlice(),
	}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("add default route via %s: %w", PodGateway6, err)
	}
	return nil
}

// ipv6Switch sets disable_ipv6 for the named interface (or "all", which every link follows).
func ipv6Switch(link string, on bool) error {
	v := "1"
	if on {
		v = "0"
	}
	return sysctl("net/ipv6/conf/"+link+"/disable_ipv6", v)
}

func addAddr6(l netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: prefixToIPNet(p), Flags: unix.IFA_F_NODAD}
	a.IPNet.IP = p.Addr().AsSlice()
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

func neigh6(ifindex int, ip netip.Addr, mac net.HardwareAddr) error {
	n := &netlink.Neigh{LinkIndex: ifindex, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
	if err := netlink.NeighAdd(n); err != nil {
		return fmt.Errorf("add neighbour %s: %w", ip, err)
	}
	return nil
}
