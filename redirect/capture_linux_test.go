package redirect_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/redirect"
	"github.com/ambitmesh/ambit/tests/netns"
)

// Outbound: a pod on node1 dials a pod on node2; the SYN is captured at its veth into the
// :15001 listener, whose accepted socket names the original destination; the mini ztunnel
// splices it there from the client's IP.
func TestOutboundCapture(t *testing.T) {
	for _, mode := range []redirect.AttachMode{redirect.AttachTCX, redirect.AttachClsact} {
		t.Run(mode.String(), func(t *testing.T) {
			topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
			node1 := topo.Nodes[0]
			client, server := node1.Pods[0], topo.Nodes[1].Pods[0]
			echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 8080).String())

			c := newCapture(t, node1, captureConfig(t, node1, mode))
			if got := c.Mode(); got != mode {
				t.Fatalf("mode = %v, want %v", got, mode)
			}
			enroll(t, c, client)
			z := startZtunnel(t, node1, false)

			local := mustRoundTrip(t, client.NS, echo.Addr, "hello outbound")
			acc := z.Accepted()
			if len(acc) != 1 {
				t.Fatalf("ztunnel accepted %v, want one connection", acc)
			}
			if acc[0].Port != redirect.DefaultOutboundPort || acc[0].Local != echo.Addr || acc[0].Remote != local {
				t.Fatalf("accepted %+v, want on :%d local %s remote %s", acc[0], redirect.DefaultOutboundPort, echo.Addr, local)
			}
			if peers := echo.Peers(); len(peers) != 1 || peers[0].Addr() != client.IP {
				t.Fatalf("echo peers %v, want one from %s", peers, client.IP)
			}
			if got := c.Pods(); len(got) != 1 || got[client.IP] != client.HostIfindex {
				t.Fatalf("Pods() = %v", got)
			}
		})
	}
}

// Inbound: from another node to an enrolled pod, :15008 lands on the HBONE listener and
// any other port on the plaintext one; the transparent dial delivers to the pod with the
// client's source IP.
func TestInboundCapture(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	node1, node2 := topo.Nodes[0], topo.Nodes[1]
	pod := node1.Pods[0]
	echo := pod.ServeEcho(t, netip.AddrPortFrom(pod.IP, 7000).String())
	c := newCapture(t, node1, captureConfig(t, node1, redirect.AttachAuto))
	enroll(t, c, pod)
	z := startZtunnel(t, node1, false)

	local := mustRoundTrip(t, node2.NS, echo.Addr, "hello inbound")
	if local.Addr() != node2.IP {
		t.Fatalf("client bound %s, want node2 IP %s", local, node2.IP)
	}
	if peers := echo.Peers(); len(peers) != 1 || peers[0].Addr() != node2.IP {
		t.Fatalf("echo peers %v, want one from %s (source IP preserved)", peers, node2.IP)
	}

	hbone := netip.AddrPortFrom(pod.IP, redirect.DefaultHBONEPort)
	conn, err := dialFrom(node2.NS, netip.AddrPort{}, hbone, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", hbone, err)
	}
	hboneLocal := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	conn.SetReadDeadline(time.Now().Add(ioTimeout))
	_, _ = io.Copy(io.Discard, conn) // the mini ztunnel closes it: nothing serves pod:15008
	conn.Close()

	want := []accepted{
		{Port: redirect.DefaultInboundPort, Local: echo.Addr, Remote: local},
		{Port: redirect.DefaultHBONEPort, Local: hbone, Remote: hboneLocal},
	}
	if got := z.Accepted(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("accepted %v, want %v", got, want)
	}
}

// Enrollment takes effect live both ways; a pod that is not enrolled is never captured.
func TestEnrollUnenrollLive(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	node1 := topo.Nodes[0]
	client, server := node1.Pods[0], topo.Nodes[1].Pods[0]
	echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 8080).String())
	c := newCapture(t, node1, captureConfig(t, node1, redirect.AttachAuto))
	z := startZtunnel(t, node1, false)

	steps := []struct {
		name     string
		act      func() error
		captured bool
	}{
		{"not enrolled", func() error { return nil }, false},
		{"enrolled", func() error { return c.EnrollPod(client.IP, client.HostIfindex) }, true},
		{"enrolled again", func() error { return c.EnrollPod(client.IP, client.HostIfindex) }, true},
		{"unenrolled", func() error { return c.UnenrollPod(client.IP) }, false},
		{"unenrolled again", func() error { return c.UnenrollPod(client.IP) }, false},
		{"re-enrolled", func() error { return c.EnrollPod(client.IP, client.HostIfindex) }, true},
	}
	for _, st := range steps {
		if err := st.act(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		before := len(z.Accepted())
		local := mustRoundTrip(t, client.NS, echo.Addr, st.name)
		acc := z.Accepted()
		if got := len(acc) > before; got != st.captured {
			t.Fatalf("%s: captured = %v, want %v (accepted %v)", st.name, got, st.captured, acc)
		}
		if st.captured && acc[len(acc)-1].Remote != local {
			t.Fatalf("%s: accepted %v, want remote %s", st.name, acc[len(acc)-1], local)
		}
		_, enrolled := c.Pods()[client.IP]
		if enrolled != st.captured {
			t.Fatalf("%s: Pods() = %v", st.name, c.Pods())
		}
	}
}

// A pod cannot use a source address other than its own: such packets are dropped before
// any socket lookup, even when the node would route the replies back to it.
func TestForgedSourceDropped(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	node1 := topo.Nodes[0]
	client, server := node1.Pods[0], topo.Nodes[1].Pods[0]
	echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 8080).String())
	forged := netip.MustParseAddr("198.18.1.99")
	err := client.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: forged.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	})
	if err != nil {
		t.Fatalf("add forged address: %v", err)
	}
	// Replies to the forged address would reach the pod: only the source check stops it.
	err = node1.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{LinkIndex: client.HostIfindex, Dst: &net.IPNet{IP: forged.AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK})
	})
	if err != nil {
		t.Fatalf("route forged address: %v", err)
	}
	c := newCapture(t, node1, captureConfig(t, node1, redirect.AttachAuto))
	enroll(t, c, client)
	z := startZtunnel(t, node1, false)

	if _, _, err := roundTrip(client.NS, netip.AddrPortFrom(forged, 0), echo.Addr, "forged", failTimeout); err == nil {
		t.Fatal("dial from the forged source succeeded")
	}
	if acc, peers := z.Accepted(), echo.Peers(); len(acc) != 0 || len(peers) != 0 {
		t.Fatalf("forged connection got through: ztunnel accepted %v, echo peers %v", acc, peers)
	}
	mustRoundTrip(t, client.NS, echo.Addr, "genuine") // the pod's own address still works
}

// A SYN reusing the tuple of a node-side TIME_WAIT socket (ztunnel closed first) must go
// to that socket, or the client stalls for up to a minute.
func TestTimeWaitReconnect(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	node1 := topo.Nodes[0]
	client, server := node1.Pods[0], topo.Nodes[1].Pods[0]
	dst := netip.AddrPortFrom(server.IP, 8080)
	c := newCapture(t, node1, captureConfig(t, node1, redirect.AttachAuto))
	enroll(t, c, client)
	z := startZtunnel(t, node1, true)

	src := netip.AddrPortFrom(client.IP, 40001)
	const rounds = 5
	for i := range rounds {
		conn, err := dialRetryBusy(client.NS, src, dst)
		if err != nil {
			t.Fatalf("round %d: dial from %s: %v", i, src, err)
		}
		conn.SetReadDeadline(time.Now().Add(ioTimeout))
		b, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || string(b) != "hi\n" {
			t.Fatalf("round %d: read %q, %v", i, b, err)
		}
		if i == 0 && !waitTimeWait(t, node1.NS, dst, src) {
			t.Fatal("no node-side TIME_WAIT socket after the first round: the test would not test anything")
		}
	}
	if n := len(z.Accepted()); n != rounds {
		t.Fatalf("ztunnel accepted %d connections, want %d", n, rounds)
	}
}

// dialRetryBusy dials from a fixed source port with a dial timeout well under the stall a
// mis-steered SYN causes. It retries only while the client's previous socket still holds
// the tuple (LAST_ACK): that is a client-side condition, not the one under test.
func dialRetryBusy(ns *netns.NS, src, dst netip.AddrPort) (net.Conn, error) {
	for {
		c, err := dialFrom(ns, src, dst, 10*time.Second)
		if errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EADDRINUSE) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return c, err
	}
}

// waitTimeWait waits until ns holds a TIME_WAIT socket local -> remote (the client's
// FIN is processed asynchronously).
func waitTimeWait(tb testing.TB, ns *netns.NS, local, remote netip.AddrPort) bool {
	for deadline := time.Now().Add(ioTimeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if hasTimeWait(tb, ns, local, remote) {
			return true
		}
	}
	return false
}

// hasTimeWait reports whether ns holds a TIME_WAIT socket local -> remote.
func hasTimeWait(tb testing.TB, ns *netns.NS, local, remote netip.AddrPort) bool {
	tb.Helper()
	hexAP := func(ap netip.AddrPort) string {
		b := ap.Addr().As4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", b[3], b[2], b[1], b[0], ap.Port())
	}
	found := false
	err := ns.Do(func() error {
		// /proc/net is the main thread's namespace; this thread's is under thread-self.
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) > 3 && fs[1] == hexAP(local) && fs[2] == hexAP(remote) && fs[3] == "06" {
				found = true
			}
		}
		return sc.Err()
	})
	if err != nil {
		tb.Fatalf("read tcp sockets: %v", err)
	}
	return found
}

// Fail closed: with ztunnel down (listeners and sockets gone, in-process handles closed)
// the pinned capture stays; new connections fail and nothing reaches the destination, and
// packets of an established captured connection are not forwarded in clear. A new New and
// listeners restore service with no other step.
func TestFailClosedAndRestart(t *testing.T) {
	for _, mode := range []redirect.AttachMode{redirect.AttachTCX, redirect.AttachClsact} {
		t.Run(mode.String(), func(t *testing.T) {
			topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 2})
			node1 := topo.Nodes[0]
			client, bystander, server := node1.Pods[0], node1.Pods[1], topo.Nodes[1].Pods[0]
			echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 8080).String())
			sniff := startSniffer(t, server.NS)
			cfg := captureConfig(t, node1, mode)
			c := newCapture(t, node1, cfg)
			enroll(t, c, client)
			z := startZtunnel(t, node1, false)

			// An established captured connection...
			conn, err := dialFrom(client.NS, netip.AddrPort{}, echo.Addr, ioTimeout)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(ioTimeout))
			buf := make([]byte, 5)
			if _, err := io.WriteString(conn, "alive"); err != nil {
				t.Fatalf("write: %v", err)
			}
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "alive" {
				t.Fatalf("echo %q, %v", buf, err)
			}
			tuple := conn.LocalAddr().(*net.TCPAddr).AddrPort()

			// ...then ztunnel dies.
			if err := c.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("second close: %v", err)
			}
			if c.Attached() {
				t.Fatal("Attached() after Close")
			}
			if err := c.EnrollPod(client.IP, client.HostIfindex); !errors.Is(err, redirect.ErrClosed) {
				t.Fatalf("EnrollPod after Close: %v, want ErrClosed", err)
			}
			z.Close(true)
			peersBefore := len(echo.Peers())
			mark := sniff.mark() // what the destination receives from here on
			proxied := map[uint16]bool{}
			for _, p := range echo.Peers() {
				proxied[p.Port()] = true // the dead proxy's own upstream socket (its reset)
			}

			// New connections fail, and not one of their packets reaches the destination.
			if _, _, err := roundTrip(client.NS, netip.AddrPort{}, echo.Addr, "leak?", failTimeout); err == nil {
				t.Fatal("connection succeeded with ztunnel down")
			}
			// The established connection's packets (the pod keeps sending, e.g. it missed
			// the reset) are dropped too.
			inject(t, client.NS, tuple, echo.Addr, "clear-text-leak")
			// Barrier: the same path from a pod that is not enrolled delivers; once its
			// packet arrived, a leaked one would have arrived before it.
			bys := netip.AddrPortFrom(bystander.IP, 40999)
			inject(t, bystander.NS, bys, echo.Addr, "barrier")
			if !sniff.waitFor(func(s segment) bool { return s.Src == bystander.IP && s.Payload == "barrier" }, ioTimeout) {
				t.Fatal("the barrier packet from a pod that is not enrolled never arrived")
			}
			if sniff.seenSince(mark, func(s segment) bool { return s.Src == client.IP && !proxied[s.Sport] && s.Payload != "clear-text-leak" }) {
				t.Fatal("a packet of a new connection reached the destination while ztunnel was down")
			}
			if sniff.seenSince(mark, func(s segment) bool { return s.Src == client.IP && s.Payload == "clear-text-leak" }) {
				t.Fatal("data of an established captured connection reached the destination in clear")
			}
			if got := len(echo.Peers()); got != peersBefore {
				t.Fatalf("echo server accepted %d connections while ztunnel was down", got-peersBefore)
			}

			// Restart: New takes over the pins, listeners come back; that is all.
			c2 := newCapture(t, node1, cfg)
			if got := c2.Pods(); len(got) != 1 || got[client.IP] != client.HostIfindex {
				t.Fatalf("Pods() after restart = %v, want the pod enrolled before", got)
			}
			if c2.Mode() != mode {
				t.Fatalf("mode after restart = %v, want %v", c2.Mode(), mode)
			}
			z2 := startZtunnel(t, node1, false)
			mustRoundTrip(t, client.NS, echo.Addr, "back")
			if len(z2.Accepted()) != 1 {
				t.Fatalf("after restart ztunnel accepted %v", z2.Accepted())
			}
		})
	}
}

// New is idempotent: a second New takes everything over (even while the first Capture is
// still open), keeps the pods, and capture works throughout.
func TestNewIdempotent(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	node1 := topo.Nodes[0]
	client, server := node1.Pods[0], topo.Nodes[1].Pods[0]
	echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 8080).String())
	cfg := captureConfig(t, node1, redirect.AttachAuto)
	c1 := newCapture(t, node1, cfg)
	enroll(t, c1, client)
	z := startZtunnel(t, node1, false)
	mustRoundTrip(t, client.NS, echo.Addr, "one")

	c2 := newCapture(t, node1, cfg)
	if got := c2.Pods(); len(got) != 1 || got[client.IP] != client.HostIfindex {
		t.Fatalf("Pods() = %v", got)
	}
	c1.Close()
	enroll(t, c2, client)
	mustRoundTrip(t, client.NS, echo.Addr, "two")
	if n := len(z.Accepted()); n != 2 {
		t.Fatalf("accepted %d, want 2", n)
	}
	// Exactly one of our programs on each device: the second New did not stack another.
	for _, dev := range []int{node1.UplinkIfindex, client.HostIfindex} {
		if n := ourAttachments(t, node1, dev); n != 1 {
			t.Fatalf("ifindex %d has %d capture attachments, want 1", dev, n)
		}
	}
}

// A pod enrolled while ztunnel was down is not lost, and a pod whose veth vanished is
// dropped on restart.
func TestRestartReconciles(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 1, PodsPerNode: 2})
	node1 := topo.Nodes[0]
	kept, gone := node1.Pods[0], node1.Pods[1]
	cfg := captureConfig(t, node1, redirect.AttachAuto)
	c := newCapture(t, node1, cfg)
	enroll(t, c, kept, gone)
	c.Close()
	if err := node1.Do(func() error {
		l, err := netlink.LinkByIndex(gone.HostIfindex)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatalf("delete veth: %v", err)
	}
	c2 := newCapture(t, node1, cfg)
	if got := c2.Pods(); len(got) != 1 || got[kept.IP] != kept.HostIfindex {
		t.Fatalf("Pods() after restart = %v, want only %s", got, kept.IP)
	}
	var pins []string
	ents, err := os.ReadDir(filepath.Join(cfg.PinPath, "links"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pins = append(pins, e.Name())
	}
	if want := fmt.Sprintf("pod_%d_", kept.HostIfindex); len(pins) != 2 || !slices.ContainsFunc(pins, func(p string) bool { return strings.HasPrefix(p, want) }) {
		t.Fatalf("link pins after restart %v, want the uplink and %s*", pins, want)
	}
}

// Teardown leaves nothing behind and is idempotent.
func TestTeardown(t *testing.T) {
	for _, mode := range []redirect.AttachMode{redirect.AttachTCX, redirect.AttachClsact} {
		t.Run(mode.String(), func(t *testing.T) {
			topo := netns.New(t, netns.Options{Nodes: 1, PodsPerNode: 2})
			node1 := topo.Nodes[0]
			cfg := captureConfig(t, node1, mode)
			c := newCapture(t, node1, cfg)
			enroll(t, c, node1.Pods...)
			c.Close() // as after a crash: Teardown works from the pins alone
			devs := []int{node1.UplinkIfindex, node1.Pods[0].HostIfindex, node1.Pods[1].HostIfindex}
			for _, dev := range devs {
				if n := ourAttachments(t, node1, dev); n != 1 {
					t.Fatalf("before teardown: ifindex %d has %d attachments, want 1", dev, n)
				}
			}
			for i := range 2 {
				if err := node1.Do(func() error { return redirect.Teardown(cfg) }); err != nil {
					t.Fatalf("teardown #%d: %v", i+1, err)
				}
				for _, dev := range devs {
					if n := ourAttachments(t, node1, dev); n != 0 {
						t.Fatalf("after teardown #%d: ifindex %d still has %d attachments", i+1, dev, n)
					}
				}
				assertNoRouting(t, node1, cfg)
				var st unix.Statfs_t
				if err := unix.Statfs(cfg.PinPath, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
					t.Fatalf("after teardown #%d: %s is still a bpffs", i+1, cfg.PinPath)
				}
				if ents, err := os.ReadDir(cfg.PinPath); err == nil && len(ents) != 0 {
					t.Fatalf("after teardown #%d: %s holds %d entries", i+1, cfg.PinPath, len(ents))
				}
			}
		})
	}
}

// ourAttachments counts our TCX programs and clsact filters on a device of node.
func ourAttachments(tb testing.TB, node *netns.Node, ifindex int) int {
	tb.Helper()
	n := 0
	err := node.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, ap := range res.Programs {
			p, err := ebpf.NewProgramFromID(ap.ID)
			if err != nil {
				return err
			}
			info, err := p.Info()
			p.Close()
			if err != nil {
				return err
			}
			if strings.HasPrefix(info.Name, "capture_") {
				n++
			}
		}
		dev, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		filters, err := netlink.FilterList(dev, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return nil // no clsact qdisc
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "ambit_capture") {
				n++
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("query attachments of ifindex %d: %v", ifindex, err)
	}
	return n
}

func assertNoRouting(tb testing.TB, node *netns.Node, cfg redirect.Config) {
	tb.Helper()
	err := node.Do(func() error {
		rules, err := netlink.RuleList(unix.AF_INET)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if r.Table == redirect.DefaultRouteTable || r.Mark == redirect.DefaultMark {
				return fmt.Errorf("rule left: %v", r)
			}
		}
		routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: redirect.DefaultRouteTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		if len(routes) != 0 {
			return fmt.Errorf("routes left in table %d: %v", redirect.DefaultRouteTable, routes)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

func TestHostInterface(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 2})
	node1 := topo.Nodes[0]
	err := node1.Do(func() error {
		for _, p := range node1.Pods {
			got, err := redirect.HostInterface(p.IP)
			if err != nil {
				return err
			}
			if got != p.HostIfindex {
				return fmt.Errorf("HostInterface(%s) = %d, want %d", p.IP, got, p.HostIfindex)
			}
		}
		for _, ip := range []netip.Addr{topo.Nodes[1].Pods[0].IP, node1.IP} {
			if _, err := redirect.HostInterface(ip); !errors.Is(err, redirect.ErrNotDirect) {
				return fmt.Errorf("HostInterface(%s) = %v, want ErrNotDirect", ip, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 1, PodsPerNode: -1})
	node1 := topo.Nodes[0]
	cfg := captureConfig(t, node1, redirect.AttachAuto)
	c := newCapture(t, node1, cfg)
	tests := []struct {
		name string
		err  error
	}{
		{"ipv6 pod", c.EnrollPod(netip.MustParseAddr("2001:db8::1"), 3)},
		{"zero ifindex", c.EnrollPod(netip.MustParseAddr("198.18.1.10"), 0)},
		{"missing device", c.EnrollPod(netip.MustParseAddr("198.18.1.10"), 99999)},
		{"invalid unenroll", c.UnenrollPod(netip.Addr{})},
	}
	for _, tc := range tests {
		if tc.err == nil {
			t.Errorf("%s: want error", tc.name)
		}
	}
	if len(c.Pods()) != 0 {
		t.Fatalf("failed enrollments left pods: %v", c.Pods())
	}
	bad := cfg
	bad.Uplinks = []string{"nosuchdev0"}
	if err := node1.Do(func() error { _, err := redirect.New(bad); return err }); err == nil || !strings.Contains(err.Error(), "nosuchdev0") {
		t.Fatalf("New with a missing uplink: %v", err)
	}
	_, err := redirect.DialTransparent(context.Background(), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddrPort("198.18.0.1:1"))
	if err == nil {
		t.Fatal("DialTransparent from IPv6: want error")
	}
}

// Restarting in the other attach mode replaces the old attachments instead of stacking.
func TestSwitchAttachMode(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 2, PodsPerNode: 1})
	node1 := topo.Nodes[0]
	client, server := node1.Pods[0], topo.Nodes[1].Pods[0]
	echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 8080).String())
	cfg := captureConfig(t, node1, redirect.AttachTCX)
	z := startZtunnel(t, node1, false)
	for i, mode := range []redirect.AttachMode{redirect.AttachTCX, redirect.AttachClsact, redirect.AttachTCX} {
		cfg.Attach = mode
		c := newCapture(t, node1, cfg)
		if i == 0 {
			enroll(t, c, client)
		}
		if c.Mode() != mode {
			t.Fatalf("mode %v, want %v", c.Mode(), mode)
		}
		for _, dev := range []int{node1.UplinkIfindex, client.HostIfindex} {
			if n := ourAttachments(t, node1, dev); n != 1 {
				t.Fatalf("%v: ifindex %d has %d capture attachments, want 1", mode, dev, n)
			}
		}
		mustRoundTrip(t, client.NS, echo.Addr, mode.String())
		if n := len(z.Accepted()); n != i+1 {
			t.Fatalf("%v: accepted %d, want %d", mode, n, i+1)
		}
		c.Close()
	}
}

// Connections accepted by a transparent listener keep TCP keepalive on (a pod that
// vanishes without FIN or RST is noticed) with the listener's settings, which Go no
// longer sets per connection.
func TestListenTransparentKeepAlive(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 1})
	node := topo.Nodes[0]
	var l net.Listener
	if err := node.NS.Do(func() (err error) {
		l, err = redirect.ListenTransparent(context.Background(), "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := node.NS.Dial(context.Background(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	checkProxiedSockopts(t, "accepted", a)
}

// IPv6 is not captured: an enrolled pod's IPv6 is dropped at its veth, so it can never
// leave in clear, while a pod outside the mesh keeps using it.
func TestIPv6DroppedFromEnrolledPod(t *testing.T) {
	topo := netns.New(t, netns.Options{Nodes: 1, PodsPerNode: 2})
	node := topo.Nodes[0]
	enrolled, outside := node.Pods[0], node.Pods[1]
	nodeLL, podLL := netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fe80::2")
	for _, p := range []*netns.Pod{enrolled, outside} {
		if err := p.Do(func() error { return linkLocal(nil, "eth0", podLL) }); err != nil {
			t.Fatalf("IPv6 in %s: %v", p.Name, err)
		}
		if err := node.Do(func() error { return linkLocal(&p.HostIfindex, "", nodeLL) }); err != nil {
			t.Fatalf("IPv6 on %s's veth: %v", p.Name, err)
		}
	}
	var l net.Listener
	if err := node.Do(func() (err error) { l, err = net.Listen("tcp6", "[::]:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peers := make(chan net.Addr, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			peers <- c.RemoteAddr()
			c.Close()
		}
	}()
	dial := func(p *netns.Pod) error {
		return p.Do(func() error {
			c, err := net.DialTimeout("tcp6", "[fe80::1%eth0]:9000", failTimeout)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := dial(outside); err != nil {
		t.Fatalf("IPv6 from a pod outside the mesh: %v", err)
	}
	<-peers
	c := newCapture(t, node, captureConfig(t, node, redirect.AttachAuto))
	enroll(t, c, enrolled)
	if err := dial(enrolled); err == nil {
		t.Fatal("an enrolled pod's IPv6 connection got through")
	}
	select {
	case a := <-peers:
		t.Fatalf("the node accepted IPv6 from the enrolled pod (%s)", a)
	default:
	}
	if err := dial(outside); err != nil {
		t.Fatalf("IPv6 from the pod outside the mesh after enrolling the other: %v", err)
	}
}

// linkLocal enables IPv6 on the link (by name, or by index when ifindex is set) of the
// current namespace and gives it addr/64 without duplicate detection.
func linkLocal(ifindex *int, name string, addr netip.Addr) error {
	var l netlink.Link
	var err error
	if ifindex != nil {
		l, err = netlink.LinkByIndex(*ifindex)
	} else {
		l, err = netlink.LinkByName(name)
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+l.Attrs().Name+"/disable_ipv6", []byte("0"), 0o644); err != nil {
		return err
	}
	return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD})
}

// A pod outside the mesh reaching an enrolled pod of the same node passes no uplink:
// SetPlainPods puts the uplink program on its veth, so the connection lands on the
// inbound listener (and its source address reaches the pod). Without it the enrolled
// pod's replies are dropped (fail closed). The plain link survives a restart, enrolling
// the pod replaces it, and Teardown removes it.
func TestPlainPodToEnrolledPodSameNode(t *testing.T) {
	for _, mode := range []redirect.AttachMode{redirect.AttachTCX, redirect.AttachClsact} {
		t.Run(mode.String(), func(t *testing.T) {
			topo := netns.New(t, netns.Options{Nodes: 1, PodsPerNode: 2})
			node := topo.Nodes[0]
			server, plain := node.Pods[0], node.Pods[1]
			echo := server.ServeEcho(t, netip.AddrPortFrom(server.IP, 7000).String())
			cfg := captureConfig(t, node, mode)
			c := newCapture(t, node, cfg)
			enroll(t, c, server)
			z := startZtunnel(t, node, false)
			if _, _, err := roundTrip(plain.NS, netip.AddrPort{}, echo.Addr, "no plain capture", failTimeout); err == nil {
				t.Fatal("same-node plaintext to an enrolled pod got through without capture")
			}
			if err := c.SetPlainPods([]int{plain.HostIfindex, server.HostIfindex}); err != nil {
				t.Fatal(err)
			}
			if got := c.PlainPods(); !slices.Equal(got, []int{plain.HostIfindex}) {
				t.Fatalf("PlainPods() = %v, want only the plain pod's veth %d (the enrolled one is skipped)", got, plain.HostIfindex)
			}
			local := mustRoundTrip(t, plain.NS, echo.Addr, "captured")
			if acc := z.Accepted(); len(acc) == 0 || acc[len(acc)-1] != (accepted{Port: redirect.DefaultInboundPort, Local: echo.Addr, Remote: local}) {
				t.Fatalf("accepted %v, want the inbound listener from %s", acc, local)
			}
			if peers := echo.Peers(); peers[len(peers)-1].Addr() != plain.IP {
				t.Fatalf("echo saw %v, want the plain pod's address last", peers)
			}

			c.Close()
			c = newCapture(t, node, cfg)
			if mode == redirect.AttachTCX {
				if got := c.PlainPods(); !slices.Equal(got, []int{plain.HostIfindex}) {
					t.Fatalf("PlainPods() after restart = %v, want %d taken over", got, plain.HostIfindex)
				}
			}
			if err := c.SetPlainPods([]int{plain.HostIfindex}); err != nil {
				t.Fatal(err)
			}
			mustRoundTrip(t, plain.NS, echo.Addr, "after restart")
			if n := ourAttachments(t, node, plain.HostIfindex); n != 1 {
				t.Fatalf("plain veth has %d attachments, want 1", n)
			}
			enroll(t, c, plain)
			if err := c.SetPlainPods([]int{plain.HostIfindex}); err != nil {
				t.Fatal(err)
			}
			if got := c.PlainPods(); len(got) != 0 {
				t.Fatalf("PlainPods() after enrolling it = %v, want none", got)
			}
			if n := ourAttachments(t, node, plain.HostIfindex); n != 1 {
				t.Fatalf("enrolled veth has %d attachments, want 1 (the pod program)", n)
			}
			if err := c.UnenrollPod(plain.IP); err != nil {
				t.Fatal(err)
			}
			if err := c.SetPlainPods([]int{plain.HostIfindex}); err != nil {
				t.Fatal(err)
			}
			c.Close()
			if err := node.Do(func() error { return redirect.Teardown(cfg) }); err != nil {
				t.Fatal(err)
			}
			if n := ourAttachments(t, node, plain.HostIfindex); n != 0 {
				t.Fatalf("after teardown the plain veth has %d attachments", n)
			}
		})
	}
}
