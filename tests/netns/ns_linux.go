package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// RunDir is where named network namespaces are bind-mounted, as `ip netns` does.
const RunDir = "/run/netns"

// NS is a named network namespace (usable with `ip netns exec <Name>`).
type NS struct {
	Name string // name under /run/netns
	Path string // /run/netns/<Name>

	topo *Topology // owner, for captures stopped on Close; nil for foreign namespaces
}

// Open returns an NS for an existing named namespace, for example one made by `ip netns add`.
func Open(name string) (*NS, error) {
	p := filepath.Join(RunDir, name)
	if _, err := os.Stat(p); err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	return &NS{Name: name, Path: p}, nil
}

// createNamed makes a new network namespace and bind-mounts it at /run/netns/<name>.
func createNamed(name string) (*NS, error) {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", RunDir, err)
	}
	p := filepath.Join(RunDir, name)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create netns file %s: %w", p, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread that unshared is terminated when this goroutine ends.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, p, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount netns at %s: %w", p, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(p)
		return nil, err
	}
	return &NS{Name: name, Path: p}, nil
}

// deleteNamed unmounts (every stacked mount of) and removes /run/netns/<name>.
func deleteNamed(name string) error {
	p := filepath.Join(RunDir, name)
	for i := 0; i < 16; i++ {
		err := unix.Unmount(p, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if err != nil {
			return fmt.Errorf("unmount netns %s: %w", p, err)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", p, err)
	}
	return nil
}

// Do runs fn on a goroutine locked to an OS thread that has switched into ns. The thread is
// discarded afterwards, never returned to the scheduler in a foreign namespace. Goroutines
// started by fn do NOT run in ns. A panic in fn is re-raised in the caller.
func (ns *NS) Do(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		p        any
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, see above
		fd, err := unix.Open(ns.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- result{err: fmt.Errorf("open netns %s: %w", ns.Path, err)}
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			res <- result{err: fmt.Errorf("enter netns %s: %w", ns.Name, err)}
			return
		}
		done := false
		defer func() {
			if done {
				return
			}
			if p := recover(); p != nil {
				res <- result{panicked: true, p: p}
				return
			}
			res <- result{err: fmt.Errorf("netns %s: function exited with runtime.Goexit (t.FailNow inside Do?)", ns.Name)}
		}()
		err = fn()
		done = true
		res <- result{err: err}
	}()
	r := <-res
	if r.panicked {
		panic(r.p)
	}
	return r.err
}

// Listen creates a listener whose socket lives in ns.
func (ns *NS) Listen(network, addr string) (net.Listener, error) {
	l, err := in(ns, func() (net.Listener, error) { return net.Listen(network, addr) })
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, addr, ns.Name, err)
	}
	return l, nil
}

// ListenPacket creates a packet socket (UDP) in ns.
func (ns *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	c, err := in(ns, func() (net.PacketConn, error) { return net.ListenPacket(network, addr) })
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, addr, ns.Name, err)
	}
	return c, nil
}

// Dial connects from a socket created in ns.
func (ns *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return ns.DialContext(ctx, network, addr)
}

// DialContext is Dial with the signature of net.Dialer.DialContext, to inject as a dial func.
func (ns *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := in(ns, func() (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from netns %s: %w", network, addr, ns.Name, err)
	}
	return c, nil
}

// Command returns a command that runs name in ns (through nsenter, which execs it, so
// Process.Pid is the program's own PID).
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	a := append([]string{"--net=" + ns.Path, "--", name}, args...)
	return exec.CommandContext(ctx, "nsenter", a...)
}

// Sysctl writes a sysctl in ns. key is dotted ("net.ipv4.ip_forward") or a path under
// /proc/sys with slashes ("net/ipv4/conf/eth0.1/rp_filter").
func (ns *NS) Sysctl(key, value string) error {
	return ns.Do(func() error { return sysctl(key, value) })
}

// sysctl writes a sysctl in the calling thread's namespace.
func sysctl(key, value string) error {
	if err := os.WriteFile(sysctlPath(key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// SysctlGet reads a sysctl in ns (same key forms as Sysctl).
func (ns *NS) SysctlGet(key string) (string, error) {
	return in(ns, func() (string, error) {
		b, err := os.ReadFile(sysctlPath(key))
		if err != nil {
			return "", fmt.Errorf("read sysctl %s: %w", key, err)
		}
		return strings.TrimSpace(string(b)), nil
	})
}

// sysctlPath is the file of a sysctl key in either form.
func sysctlPath(key string) string {
	rel := key
	if !strings.Contains(key, "/") {
		rel = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join("/proc/sys", rel)
}

// in returns what f creates in ns (a socket, a value read there).
func in[T any](ns *NS, f func() (T, error)) (T, error) {
	var v T
	err := ns.Do(func() error {
		var err error
		v, err = f()
		return err
	})
	return v, err
}
