package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// echoRoundTrip sends msg through an echo server from ns, half-closes, reads the echo to EOF.
func echoRoundTrip(tb testing.TB, from *NS, to netip.AddrPort, msg []byte) netip.AddrPort {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", to.String())
	if err != nil {
		tb.Fatalf("dial %s: %v", to, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(msg); err != nil {
		tb.Fatalf("write: %v", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		tb.Fatalf("close write: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		tb.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		tb.Fatalf("echo: got %d bytes, want %d", len(got), len(msg))
	}
	return c.LocalAddr().(*net.TCPAddr).AddrPort()
}

func TestTopologyPodToPod(t *testing.T) {
	topo := New(t, Options{})
	if len(topo.Nodes) != 2 || len(topo.Nodes[0].Pods) != 2 || len(topo.Nodes[1].Pods) != 2 {
		t.Fatalf("want 2 nodes x 2 pods, got %d nodes", len(topo.Nodes))
	}
	n1p0, n1p1, n2p0 := topo.Nodes[0].Pods[0], topo.Nodes[0].Pods[1], topo.Nodes[1].Pods[0]
	if got, want := n2p0.IP, netip.MustParseAddr("198.18.2.10"); got != want {
		t.Fatalf("node2-pod0 IP = %s, want %s", got, want)
	}
	if n1p1.Name != "node1-pod1" || topo.Pod("node2-pod1") == nil {
		t.Fatalf("unexpected pod names: %s", n1p1.Name)
	}
	msg := bytes.Repeat([]byte("ambit "), 50000) // several segments and windows
	tests := []struct {
		name     string
		from, to *Pod
	}{
		{"cross-node", n1p0, n2p0},
		{"same-node", n1p0, n1p1},
		{"reverse", n2p0, n1p1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.to.ServeEcho(t, netip.AddrPortFrom(tc.to.IP, 7000).String())
			local := echoRoundTrip(t, tc.from.NS, srv.Addr, msg)
			if local.Addr() != tc.from.IP {
				t.Fatalf("client bound %s, want pod IP %s", local, tc.from.IP)
			}
			peers := srv.Peers()
			if len(peers) != 1 || peers[0] != local {
				t.Fatalf("server saw peers %v, want [%s]", peers, local)
			}
		})
	}
	t.Run("node-to-pod", func(t *testing.T) {
		srv := n2p0.ServeEcho(t, ":7001")
		echoRoundTrip(t, topo.Nodes[0].NS, netip.AddrPortFrom(n2p0.IP, srv.Addr.Port()), []byte("hi"))
		if p := srv.Peers(); len(p) != 1 || p[0].Addr() != topo.Nodes[0].IP {
			t.Fatalf("server saw %v, want node1 underlay IP %s", p, topo.Nodes[0].IP)
		}
	})
}

func TestPodRoutesDoNotLeak(t *testing.T) {
	topo := New(t, Options{Nodes: 1, PodsPerNode: 1})
	pod := topo.Nodes[0].Pods[0]
	for _, dst := range []string{"203.0.113.1:443", "198.18.255.1:80", "198.19.0.1:80", "203.0.113.9:443", "198.18.255.2:80"} {
		t.Run(dst, func(t *testing.T) {
			// A generous deadline: the point is that the error is "unreachable", not a timeout.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := pod.Dial(ctx, "tcp", dst)
			if err == nil {
				c.Close()
				t.Fatalf("dial %s succeeded", dst)
			}
			if !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
				t.Fatalf("dial %s: %v, want host/net unreachable", dst, err)
			}
		})
	}
	// The node has no default route: nothing but the pod CIDRs and the underlay is reachable.
	err := topo.Nodes[0].Do(func() error {
		c, err := net.Dial("tcp", "203.0.113.1:443")
		if err == nil {
			c.Close()
			return errors.New("node dial to 203.0.113.1 succeeded")
		}
		if !errors.Is(err, syscall.ENETUNREACH) {
			return fmt.Errorf("node dial: %v, want network unreachable", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func netnsEntries(tb testing.TB, prefix string) []string {
	tb.Helper()
	ents, err := os.ReadDir(RunDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		tb.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestCloseRemovesEverything(t *testing.T) {
	RequireRoot(t)
	topo, err := Build(Options{Nodes: 3, PodsPerNode: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := netnsEntries(t, topo.Prefix); len(got) != 1+3+3 {
		t.Fatalf("netns after Build: %v, want 7", got)
	}
	// A socket left open by a sloppy test must not keep the veths around.
	l, err := topo.Nodes[0].Pods[0].Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pod := topo.Nodes[0].Pods[0]
	if err := topo.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got := netnsEntries(t, topo.Prefix); len(got) != 0 {
		t.Fatalf("netns left after Close: %v", got)
	}
	if err := topo.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := pod.Do(func() error { return nil }); err == nil {
		t.Fatal("Do in a deleted namespace succeeded")
	}
	if _, err := topo.Nodes[0].AddPod("late"); err == nil {
		t.Fatal("AddPod after Close succeeded")
	}
	if got := netnsEntries(t, topo.Prefix); len(got) != 0 {
		t.Fatalf("netns left after AddPod on closed topology: %v", got)
	}
}

func TestBuildErrors(t *testing.T) {
	RequireRoot(t)
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"too many nodes", Options{Nodes: 251}, "Nodes"},
		{"too many pods", Options{PodsPerNode: 245}, "PodsPerNode"},
		{"long prefix", Options{Prefix: "abcdefghij"}, "too long"},
		{"slash in prefix", Options{Prefix: "a/b"}, "not a valid name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topo, err := Build(tc.opts)
			if err == nil {
				topo.Close()
				t.Fatal("Build succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestBuildFailureCleansUpAndCleanupStale(t *testing.T) {
	RequireRoot(t)
	prefix := fmt.Sprintf("st%d", os.Getpid()%10000)
	// A leftover from a "crashed run": its node2 namespace blocks the new build halfway.
	stale, err := createNamed(prefix + "-node2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNamed(stale.Name) })
	_, err = Build(Options{Prefix: prefix})
	if err == nil {
		t.Fatal("Build over a stale namespace succeeded")
	}
	if got := netnsEntries(t, prefix); len(got) != 1 || got[0] != stale.Name {
		t.Fatalf("after failed Build: %v, want only the stale %s", got, stale.Name)
	}
	if err := CleanupStale(prefix); err != nil {
		t.Fatal(err)
	}
	if got := netnsEntries(t, prefix); len(got) != 0 {
		t.Fatalf("after CleanupStale: %v", got)
	}
	topo := New(t, Options{Prefix: prefix, Nodes: 2, PodsPerNode: 1})
	echoRoundTrip(t, topo.Nodes[0].Pods[0].NS, topo.Nodes[1].Pods[0].ServeEcho(t, topo.Nodes[1].Pods[0].IP.String()+":80").Addr, []byte("x"))
}

func TestAddPod(t *testing.T) {
	topo := New(t, Options{PodsPerNode: 1})
	p, err := topo.Nodes[1].AddPod("extra")
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddr("198.18.2.11"); p.IP != want {
		t.Fatalf("IP %s, want %s", p.IP, want)
	}
	if p.NS.Name != topo.Prefix+"-extra" || p.HostVeth != topo.Prefix+"n2p1" || p.Node != topo.Nodes[1] {
		t.Fatalf("unexpected pod %+v", p)
	}
	if _, err := topo.Nodes[0].AddPod("extra"); err == nil {
		t.Fatal("duplicate pod name accepted")
	}
	// The failed attempt used no address: the next pod on node1 still gets .11.
	q, err := topo.Nodes[0].AddPod("extra2")
	if err != nil {
		t.Fatal(err)
	}
	srv := p.ServeEcho(t, ":9000")
	echoRoundTrip(t, q.NS, netip.AddrPortFrom(p.IP, srv.Addr.Port()), []byte("hello"))
	if got := srv.Peers(); len(got) != 1 || got[0].Addr() != q.IP {
		t.Fatalf("peers %v, want %s", got, q.IP)
	}
	// HostIfindex names the host veth in the node namespace.
	err = topo.Nodes[1].Do(func() error {
		ifi, err := net.InterfaceByIndex(p.HostIfindex)
		if err != nil {
			return err
		}
		if ifi.Name != p.HostVeth {
			return fmt.Errorf("ifindex %d is %s, want %s", p.HostIfindex, ifi.Name, p.HostVeth)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func nsInode(tb testing.TB, path string) uint64 {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		tb.Fatal(err)
	}
	return st.Ino
}

func TestDoDoesNotLeakNamespace(t *testing.T) {
	topo := New(t, Options{Nodes: 1, PodsPerNode: 1})
	pod := topo.Nodes[0].Pods[0]
	mine := nsInode(t, "/proc/thread-self/ns/net")
	want := nsInode(t, pod.Path)
	for i := 0; i < 50; i++ {
		err := pod.Do(func() error {
			if got := nsInode(t, "/proc/thread-self/ns/net"); got != want {
				return fmt.Errorf("inside Do: netns inode %d, want %d", got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every thread of the process is still in the private namespace (the main thread too:
	// it is reserved for the main goroutine, see init). Do's thread ends with its goroutine,
	// which may be a moment after Do returned, so a straggler gets time to exit; one that
	// never does is a leak.
	foreign := func() []string {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, task := range tasks {
			var st unix.Stat_t
			if err := unix.Stat("/proc/self/task/"+task.Name()+"/ns/net", &st); err != nil {
				continue // thread exited meanwhile
			}
			if st.Ino != mine {
				out = append(out, fmt.Sprintf("thread %s in netns %d", task.Name(), st.Ino))
			}
		}
		return out
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left := foreign()
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads left outside the process's netns %d: %v", mine, left)
		}
	}
	wantErr := errors.New("boom")
	if err := pod.Do(func() error { return wantErr }); !errors.Is(err, wantErr) {
		t.Fatalf("Do error %v, want %v", err, wantErr)
	}
	func() {
		defer func() {
			if r := recover(); r != "panic inside" {
				t.Fatalf("recovered %v", r)
			}
		}()
		pod.Do(func() error { panic("panic inside") })
	}()
}

func TestSysctlAndCommand(t *testing.T) {
	topo := New(t, Options{Nodes: 1, PodsPerNode: 1})
	node, pod := topo.Nodes[0], topo.Nodes[0].Pods[0]
	if v, err := node.SysctlGet("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Fatalf("node ip_forward = %q, %v", v, err)
	}
	if err := pod.Sysctl("net.ipv4.ip_local_port_range", "40000 40100"); err != nil {
		t.Fatal(err)
	}
	if v, _ := pod.SysctlGet("net/ipv4/ip_local_port_range"); strings.Join(strings.Fields(v), " ") != "40000 40100" {
		t.Fatalf("port range %q", v)
	}
	if err := pod.Sysctl("net.ipv4.no_such_key", "1"); err == nil {
		t.Fatal("unknown sysctl accepted")
	}
	out, err := pod.Command(context.Background(), "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr: %v: %s", err, out)
	}
	if !strings.Contains(string(out), pod.IP.String()+"/32") {
		t.Fatalf("pod addresses %q lack %s/32", out, pod.IP)
	}
	out, err = pod.Command(context.Background(), "ip", "-4", "route", "show", "default").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via 169.254.1.1") || !strings.Contains(string(out), "onlink") {
		t.Fatalf("pod default route %q, %v", out, err)
	}
	// `ip netns exec` sees the namespace too.
	out, err = exec.Command("ip", "netns", "exec", node.NS.Name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), node.IP.String()+"/24") {
		t.Fatalf("ip netns exec: %q, %v", out, err)
	}
}

func TestProcStopKill(t *testing.T) {
	topo := New(t, Options{Nodes: 1, PodsPerNode: -1})
	node := topo.Nodes[0]
	ctx := context.Background()

	t.Run("stop", func(t *testing.T) {
		p, err := topo.Start(node.Command(ctx, "sh", "-c", "echo started; exec sleep 1000"))
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return strings.Contains(p.Output(), "started") })
		if err := p.Stop(); err != nil {
			t.Fatalf("stop: %v (output %q)", err, p.Output())
		}
		if !p.Cmd.ProcessState.Exited() && p.Cmd.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Fatalf("state %v", p.Cmd.ProcessState)
		}
	})
	t.Run("kill", func(t *testing.T) {
		p, err := topo.Start(node.Command(ctx, "sleep", "1000"))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		if ws := p.Cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
			t.Fatalf("state %v", p.Cmd.ProcessState)
		}
		if err := p.Stop(); err != nil {
			t.Fatalf("stop after kill: %v", err)
		}
	})
	t.Run("stop ignores TERM", func(t *testing.T) {
		p, err := topo.Start(node.Command(ctx, "sh", "-c", `trap "" TERM; echo ready; while :; do sleep 0.2; done`))
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return strings.Contains(p.Output(), "ready") })
		if err := p.Stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if ws := p.Cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
			t.Fatalf("state %v, want killed after TERM was ignored", p.Cmd.ProcessState)
		}
	})
	t.Run("exit status", func(t *testing.T) {
		p, err := topo.Start(node.Command(ctx, "sh", "-c", "echo bad >&2; exit 3"))
		if err != nil {
			t.Fatal(err)
		}
		var ee *exec.ExitError
		if err := p.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("wait: %v", err)
		}
		if err := p.Stop(); err == nil {
			t.Fatal("stop of a failed process returned nil")
		}
		if !strings.Contains(p.Output(), "bad") {
			t.Fatalf("output %q", p.Output())
		}
	})
	t.Run("close kills", func(t *testing.T) {
		topo2 := New(t, Options{Nodes: 1, PodsPerNode: -1})
		p, err := topo2.Start(topo2.Nodes[0].Command(ctx, "sleep", "1000"))
		if err != nil {
			t.Fatal(err)
		}
		if err := topo2.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.Done():
		default:
			t.Fatal("process alive after Close")
		}
		if _, err := topo2.Start(exec.Command("true")); err == nil {
			t.Fatal("Start after Close succeeded")
		}
	})
}

// waitFor polls cond; it is a liveness wait, not a timing assertion.
func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatal("condition not met within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDefaultPrefixSkipsLeftovers(t *testing.T) {
	RequireRoot(t)
	// Occupy the next default prefix, as a crashed run would have.
	next := fmt.Sprintf("ab%dx%s", os.Getpid()%10000, big36(topoCounter.Load()))
	if topoCounter.Load() == 0 {
		next = fmt.Sprintf("ab%d", os.Getpid()%10000)
	}
	stale, err := createNamed(next + "-ul")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { CleanupStale(next) })
	topo := New(t, Options{Nodes: 1, PodsPerNode: -1})
	if topo.Prefix == next {
		t.Fatalf("default prefix %s collides with a leftover", next)
	}
	if _, err := os.Stat(stale.Path); err != nil {
		t.Fatalf("leftover touched: %v", err)
	}
}
