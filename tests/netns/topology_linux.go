package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addressing, all inside 198.18.0.0/15 (RFC 2544 benchmarking space).
var (
	// UnderlayCIDR holds the nodes' uplink addresses: node i is 198.18.0.<i>.
	UnderlayCIDR = netip.MustParsePrefix("198.18.0.0/24")
	// PodGateway is the link-local next hop of every pod's default route.
	PodGateway = netip.MustParseAddr("169.254.1.1")
)

const (
	// FirstPodHost is the last octet of a node's first pod: node i pod j is 198.18.<i>.<10+j>.
	FirstPodHost = 10
	maxNodes     = 250
	maxPods      = 254 - FirstPodHost
	bridgeName   = "br0"
	uplinkName   = "eth0"
	podIfName    = "eth0"
	maxIfName    = unix.IFNAMSIZ - 1
)

// Options shapes a topology. Zero values take the defaults.
type Options struct {
	Nodes       int    // default 2
	PodsPerNode int    // default 2; negative means none
	Prefix      string // netns and host-veth name prefix; default "ab<pid mod 10000>[counter]"
}

// Topology is a set of nodes joined by an underlay bridge, each with routed pods.
type Topology struct {
	Prefix   string
	Underlay *NS // holds bridge "br0"; every node's uplink is a port of it
	Nodes    []*Node

	mu       sync.Mutex
	closed   bool
	nss      []*NS // every namespace made, in creation order
	procs    []*Proc
	captures []*Capture
}

// Node is a node network namespace: an uplink on the underlay and host-side pod veths.
type Node struct {
	*NS
	Index         int
	Name          string // "node1", ...
	IP            netip.Addr
	Uplink        string // "eth0"
	UplinkIfindex int    // ifindex of Uplink in the node namespace
	PodCIDR       netip.Prefix
	Pods          []*Pod

	topo    *Topology
	nextPod int
}

// Pod is a pod network namespace: "eth0" with a /32, default route via PodGateway.
type Pod struct {
	*NS
	Name        string
	IP          netip.Addr
	MAC         net.HardwareAddr // of the pod's eth0
	Node        *Node
	HostVeth    string // host-side veth name in the node namespace
	HostIfindex int    // its ifindex in the node namespace
	HostMAC     net.HardwareAddr
}

var topoCounter atomic.Int64

func defaultPrefix() string {
	n := topoCounter.Add(1) - 1
	p := fmt.Sprintf("ab%d", os.Getpid()%10000)
	if n > 0 {
		p += strings.ToLower(fmt.Sprintf("x%s", big36(n)))
	}
	return p
}

func prefixInUse(prefix string) bool {
	m, _ := filepath.Glob(filepath.Join(RunDir, prefix+"-*"))
	return len(m) > 0
}

func big36(n int64) string {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 36 {
		b = append([]byte{digits[n%36]}, b...)
	}
	return string(b)
}

// New is Build for tests: it fails tb on error and closes the topology in tb.Cleanup.
func New(tb testing.TB, opts Options) *Topology {
	tb.Helper()
	RequireRoot(tb)
	t, err := Build(opts)
	if err != nil {
		tb.Fatalf("build topology: %v", err)
	}
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("close topology: %v", err)
		}
	})
	return t
}

// Build creates the underlay, the nodes and their pods. On error it removes what it made.
func Build(opts Options) (_ *Topology, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.PodsPerNode == 0 {
		opts.PodsPerNode = 2
	}
	if opts.PodsPerNode < 0 {
		opts.PodsPerNode = 0
	}
	if opts.Prefix == "" {
		// Skip prefixes in use: leftovers of a crashed run, or a live process whose PID is
		// congruent modulo 10000.
		for opts.Prefix = defaultPrefix(); prefixInUse(opts.Prefix); opts.Prefix = defaultPrefix() {
		}
	}
	if opts.Nodes < 1 || opts.Nodes > maxNodes {
		return nil, fmt.Errorf("options: Nodes %d out of range 1..%d", opts.Nodes, maxNodes)
	}
	if opts.PodsPerNode > maxPods {
		return nil, fmt.Errorf("options: PodsPerNode %d out of range 0..%d", opts.PodsPerNode, maxPods)
	}
	if strings.ContainsAny(opts.Prefix, "/ \t\n") || strings.HasPrefix(opts.Prefix, ".") {
		return nil, fmt.Errorf("options: Prefix %q is not a valid name", opts.Prefix)
	}
	if n := len(hostVethName(opts.Prefix, opts.Nodes, maxPods-1)); n > maxIfName {
		return nil, fmt.Errorf("options: Prefix %q too long: host veth names would be %d chars (max %d)", opts.Prefix, n, maxIfName)
	}

	t := &Topology{Prefix: opts.Prefix}
	defer func() {
		if err != nil {
			if cerr := t.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("clean up partial topology: %w", cerr))
			}
		}
	}()

	if t.Underlay, err = t.newNS(opts.Prefix + "-ul"); err != nil {
		return nil, err
	}
	err = t.Underlay.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge %s: %w", bridgeName, err)
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		return nil, fmt.Errorf("underlay: %w", err)
	}

	for i := 1; i <= opts.Nodes; i++ {
		n, err := t.addNode(i)
		if err != nil {
			return nil, fmt.Errorf("node%d: %w", i, err)
		}
		t.Nodes = append(t.Nodes, n)
	}
	for _, n := range t.Nodes {
		if err := n.routeToNodes(t.Nodes); err != nil {
			return nil, fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	for _, n := range t.Nodes {
		for j := 0; j < opts.PodsPerNode; j++ {
			if _, err := n.AddPod(fmt.Sprintf("%s-pod%d", n.Name, j)); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

func hostVethName(prefix string, node, pod int) string {
	return fmt.Sprintf("%sn%dp%d", prefix, node, pod)
}

// newNS creates a namespace, registers it for Close and applies the common settings:
// lo up, IPv6 off (clean captures), forwarding on, loose reverse-path filtering.
func (t *Topology) newNS(name string) (*NS, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errors.New("topology closed")
	}
	t.mu.Unlock()
	ns, err := createNamed(name)
	if err != nil {
		return nil, err
	}
	ns.topo = t
	t.mu.Lock()
	t.nss = append(t.nss, ns)
	t.mu.Unlock()
	err = ns.Do(func() error {
		// Fresh namespaces start with ip_forward=0 and may inherit rp_filter from the
		// initial namespace: set everything explicitly.
		for _, kv := range [][2]string{
			{"net.ipv6.conf.all.disable_ipv6", "1"},
			{"net.ipv6.conf.default.disable_ipv6", "1"},
			{"net.ipv4.ip_forward", "1"},
			{"net.ipv4.conf.all.rp_filter", "0"},
			{"net.ipv4.conf.default.rp_filter", "0"},
			// Unreachable errors must reach the pod at once, not after SYN retries.
			{"net.ipv4.icmp_ratelimit", "0"},
		} {
			if err := sysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return linkUp("lo")
	})
	if err != nil {
		return nil, fmt.Errorf("set up netns %s: %w", name, err)
	}
	return ns, nil
}

// forget drops ns from the Close list after it was deleted.
func (t *Topology) forget(ns *NS) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, x := range t.nss {
		if x == ns {
			t.nss = append(t.nss[:i], t.nss[i+1:]...)
			return
		}
	}
}

func (t *Topology) addNode(i int) (*Node, error) {
	ns, err := t.newNS(fmt.Sprintf("%s-node%d", t.Prefix, i))
	if err != nil {
		return nil, err
	}
	n := &Node{
		NS:      ns,
		Index:   i,
		Name:    fmt.Sprintf("node%d", i),
		IP:      netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}),
		Uplink:  uplinkName,
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 0}), 24),
		topo:    t,
	}
	peer := fmt.Sprintf("n%d", i)
	err = ns.Do(func() error {
		ulfd, err := unix.Open(t.Underlay.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open underlay netns: %w", err)
		}
		defer unix.Close(ulfd)
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: uplinkName},
			PeerName:      peer,
			PeerNamespace: netlink.NsFd(ulfd),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add uplink veth: %w", err)
		}
		l, err := netlink.LinkByName(uplinkName)
		if err != nil {
			return fmt.Errorf("find uplink: %w", err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.IP.AsSlice(), Mask: net.CIDRMask(UnderlayCIDR.Bits(), 32)}}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add uplink address %s: %w", addr, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set uplink up: %w", err)
		}
		n.UplinkIfindex = l.Attrs().Index
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = t.Underlay.Do(func() error {
		l, err := netlink.LinkByName(peer)
		if err != nil {
			return fmt.Errorf("find underlay port %s: %w", peer, err)
		}
		br, err := netlink.LinkByName(bridgeName)
		if err != nil {
			return fmt.Errorf("find bridge: %w", err)
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attach %s to bridge: %w", peer, err)
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

// routeToNodes adds, in n, a route to every other node's pod CIDR via that node's uplink IP.
func (n *Node) routeToNodes(nodes []*Node) error {
	return n.Do(func() error {
		for _, o := range nodes {
			if o == n {
				continue
			}
			r := &netlink.Route{
				LinkIndex: n.UplinkIfindex,
				Dst:       prefixToIPNet(o.PodCIDR),
				Gw:        o.IP.AsSlice(),
			}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("add route %s via %s: %w", o.PodCIDR, o.IP, err)
			}
		}
		return nil
	})
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// AddPod adds a pod with the node's next free address. Its namespace is
// "<prefix>-<name>"; name must be unique within the topology.
func (n *Node) AddPod(name string) (*Pod, error) {
	t := n.topo
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return nil, fmt.Errorf("add pod: invalid name %q", name)
	}
	t.mu.Lock()
	j := n.nextPod
	if j >= maxPods {
		t.mu.Unlock()
		return nil, fmt.Errorf("add pod %s: %s has no free pod address", name, n.Name)
	}
	n.nextPod++
	t.mu.Unlock()

	p := &Pod{
		Name:     name,
		IP:       netip.AddrFrom4([4]byte{198, 18, byte(n.Index), byte(FirstPodHost + j)}),
		Node:     n,
		HostVeth: hostVethName(t.Prefix, n.Index, j),
	}
	ns, err := t.newNS(t.Prefix + "-" + name)
	if err != nil {
		return nil, fmt.Errorf("add pod %s: %w", name, err)
	}
	p.NS = ns
	if err := n.wirePod(p); err != nil {
		// Deleting the pod namespace destroys the veth pair with it.
		_ = ns.Do(deleteLinks)
		if derr := deleteNamed(ns.Name); derr == nil {
			t.forget(ns)
		}
		return nil, fmt.Errorf("add pod %s: %w", name, err)
	}
	t.mu.Lock()
	n.Pods = append(n.Pods, p)
	t.mu.Unlock()
	return p, nil
}

func (n *Node) wirePod(p *Pod) error {
	err := n.Do(func() error {
		podfd, err := unix.Open(p.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open pod netns: %w", err)
		}
		defer unix.Close(podfd)
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth},
			PeerName:      podIfName,
			PeerNamespace: netlink.NsFd(podfd),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", p.HostVeth, err)
		}
		l, err := netlink.LinkByName(p.HostVeth)
		if err != nil {
			return fmt.Errorf("find veth %s: %w", p.HostVeth, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", p.HostVeth, err)
		}
		p.HostIfindex = l.Attrs().Index
		p.HostMAC = l.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		return err
	}
	err = p.Do(func() error {
		l, err := netlink.LinkByName(podIfName)
		if err != nil {
			return fmt.Errorf("find pod %s: %w", podIfName, err)
		}
		p.MAC = l.Attrs().HardwareAddr
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.IP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add pod address %s: %w", p.IP, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set pod %s up: %w", podIfName, err)
		}
		// A static neighbour answers for the link-local gateway, so pods never ARP for it.
		neigh := &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       unix.AF_INET,
			State:        netlink.NUD_PERMANENT,
			IP:           PodGateway.AsSlice(),
			HardwareAddr: p.HostMAC,
		}
		if err := netlink.NeighAdd(neigh); err != nil {
			return fmt.Errorf("add gateway neighbour: %w", err)
		}
		r := &netlink.Route{
			LinkIndex: l.Attrs().Index,
			Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw:        PodGateway.AsSlice(),
			Flags:     int(netlink.FLAG_ONLINK),
		}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %s: %w", PodGateway, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return n.Do(func() error {
		neigh := &netlink.Neigh{
			LinkIndex:    p.HostIfindex,
			Family:       unix.AF_INET,
			State:        netlink.NUD_PERMANENT,
			IP:           p.IP.AsSlice(),
			HardwareAddr: p.MAC,
		}
		if err := netlink.NeighAdd(neigh); err != nil {
			return fmt.Errorf("add pod neighbour: %w", err)
		}
		r := &netlink.Route{
			LinkIndex: p.HostIfindex,
			Dst:       prefixToIPNet(netip.PrefixFrom(p.IP, 32)),
			Scope:     netlink.SCOPE_LINK,
		}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("add route to pod %s: %w", p.IP, err)
		}
		return nil
	})
}

// Pod returns the pod with the given name, or nil.
func (t *Topology) Pod(name string) *Pod {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.Nodes {
		for _, p := range n.Pods {
			if p.Name == name {
				return p
			}
		}
	}
	return nil
}

// Close stops processes and captures started through the topology, deletes every link it
// made and every namespace. It is idempotent.
func (t *Topology) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	procs, caps, nss := t.procs, t.captures, append([]*NS(nil), t.nss...)
	t.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, c := range caps {
		wg.Go(func() {
			if err := c.Stop(); err != nil && !errors.Is(err, ErrStopped) {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		})
	}
	// Captures first (SIGINT flushes the file), then the remaining processes.
	wg.Wait()
	for _, p := range procs {
		// Processes end however they end; only a failure to end them is an error here.
		wg.Go(func() { _ = p.Stop() })
	}
	wg.Wait()
	// Delete links first: a socket leaked by a test keeps its namespace alive, but the
	// devices (and the veth pairs into other namespaces) must go now.
	for i := len(nss) - 1; i >= 0; i-- {
		if err := nss[i].Do(deleteLinks); err != nil {
			errs = append(errs, fmt.Errorf("delete links in %s: %w", nss[i].Name, err))
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNamed(nss[i].Name); err != nil {
			errs = append(errs, err)
		} else {
			t.forget(nss[i])
		}
	}
	return errors.Join(errs...)
}

// deleteLinks deletes every link but lo in the calling thread's namespace.
func deleteLinks() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		err := netlink.LinkDel(l)
		// The other end of a veth disappears with its peer.
		if err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// CleanupStale deletes namespaces "<prefix>-*" left in /run/netns by crashed runs, and the
// links inside them. Processes still inside are not touched.
func CleanupStale(prefix string) error {
	if prefix == "" {
		return errors.New("cleanup stale: empty prefix")
	}
	ents, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleanup stale: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix+"-") {
			continue
		}
		ns := &NS{Name: e.Name(), Path: RunDir + "/" + e.Name()}
		_ = ns.Do(deleteLinks) // best effort: the file may be an unmounted leftover
		if err := deleteNamed(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
