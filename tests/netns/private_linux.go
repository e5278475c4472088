package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// privateEnv marks a process that was re-executed inside its own network namespace.
const privateEnv = "AMBIT_PRIVATE_NETNS"

// outerEnv carries the re-executing parent's namespace ("dev:ino"), so the child can check
// that it really left it.
const outerEnv = "AMBIT_OUTER_NETNS"

// Pin the main goroutine to the main thread for the life of the program. Otherwise a Do
// goroutine could run on the main thread, which the runtime cannot exit and instead parks
// forever in the foreign namespace, and /proc/self/ns/net would then name that namespace.
func init() { runtime.LockOSThread() }

// EnterPrivate re-executes the current binary inside a fresh network namespace when running
// as root outside one, and exits with the child's status. Inside, it brings lo up and
// returns. Not root: it returns without doing anything (privileged tests then skip).
// Call it first thing from TestMain or main.
func EnterPrivate() {
	if os.Geteuid() != 0 {
		return
	}
	if os.Getenv(privateEnv) == "1" {
		if !InPrivate() {
			fmt.Fprintf(os.Stderr, "netns: %s=1 but the process is not in a network namespace of its own; refusing to run\n", privateEnv)
			os.Exit(2)
		}
		if err := linkUp("lo"); err != nil {
			fmt.Fprintf(os.Stderr, "netns: bring lo up: %v\n", err)
			os.Exit(2)
		}
		return
	}
	os.Exit(reexec())
}

// EnterPrivateAsRoot is EnterPrivate for the main of a tool that needs root: when not
// root it says so ("name: needs root (why); run: how") and exits 1.
func EnterPrivateAsRoot(name, why, how string) {
	if os.Geteuid() != 0 {
		fmt.Fprintf(os.Stderr, "%s: needs root (%s); run: %s\n", name, why, how)
		os.Exit(1)
	}
	EnterPrivate()
}

func reexec() int {
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	outer, err := netnsID("/proc/thread-self/ns/net")
	if err != nil {
		fmt.Fprintf(os.Stderr, "netns: %v\n", err)
		return 2
	}
	cmd.Env = append(os.Environ(), privateEnv+"=1", outerEnv+"="+outer)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNET,
		// The parent does nothing but wait, so its forking thread lives as long as it does.
		Pdeathsig: unix.SIGTERM,
	}
	// Forward the signals a user or `go test` sends, so the child can clean up.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGQUIT, unix.SIGHUP)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "netns: re-exec in a private network namespace: %v\n", err)
		return 2
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	signal.Stop(sigs)
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	fmt.Fprintf(os.Stderr, "netns: wait for private child: %v\n", err)
	return 2
}

// InPrivate reports whether this process was re-executed by EnterPrivate and really runs in
// a network namespace other than pid 1's.
func InPrivate() bool {
	if os.Getenv(privateEnv) != "1" {
		return false
	}
	self, err := netnsID("/proc/thread-self/ns/net")
	if err != nil {
		return false
	}
	outer := os.Getenv(outerEnv)
	if outer == "" || outer == self {
		return false
	}
	// pid 1's namespace may be unreadable (sandboxes); when readable it must differ too.
	if init, err := netnsID("/proc/1/ns/net"); err == nil && init == self {
		return false
	}
	return true
}

func netnsID(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", path, err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

// RequireRoot skips tb when not root, and fails it when root but outside the private
// namespace (TestMain forgot EnterPrivate): a topology test must never touch the host network.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root")
	}
	if !InPrivate() {
		tb.Fatal("root but not in a private network namespace: call netns.EnterPrivate() from TestMain")
	}
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link %s up: %w", name, err)
	}
	return nil
}
