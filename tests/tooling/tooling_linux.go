// Package tooling is what the test harnesses for real components (tests/kube, tests/spire)
// share: finding or building their binaries in the versioned tool cache, running server
// processes that cannot outlive the test, waiting for them to be ready, the directory,
// context and logs they live with, and starting them for a test.
package tooling

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

// CacheDir is the versioned tool cache tests/tools/build.sh fills.
func CacheDir() string {
	root := os.Getenv("AMBIT_TOOLS_CACHE")
	if root == "" {
		root = "/var/cache/ambit-tools"
	}
	return filepath.Join(root, "v1")
}

// Missing lists the paths that are not executable files.
func Missing(paths ...string) []string {
	var m []string
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			m = append(m, p)
		}
	}
	return m
}

// Ensure makes sure every path exists, building the missing ones with
// `nice -n 19 tests/tools/build.sh <tools...>` (minutes cold). Call it before
// netns.EnterPrivate: inside the private namespace the module proxy is unreachable, so there
// it only reports what is missing.
func Ensure(ctx context.Context, paths []string, tools ...string) error {
	missing := Missing(paths...)
	if len(missing) == 0 {
		return nil
	}
	if netns.InPrivate() {
		return fmt.Errorf("test binaries %v missing inside a private network namespace (no module proxy here): build them before netns.EnterPrivate, or run tests/tools/build.sh %v", missing, tools)
	}
	script, err := buildScript()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "building %v with %s %v (minutes when cold)\n", missing, script, tools)
	cmd := exec.CommandContext(ctx, "nice", append([]string{"-n", "19", script}, tools...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		b := out.Bytes()
		if len(b) > 8<<10 {
			b = b[len(b)-8<<10:]
		}
		return fmt.Errorf("run %s %v: %w\n%s", script, tools, err, b)
	}
	if missing := Missing(paths...); len(missing) > 0 {
		return fmt.Errorf("%s %v succeeded but %v are missing", script, tools, missing)
	}
	return nil
}

// buildScript finds tests/tools/build.sh: above the working directory (go test runs in the
// package directory), else next to this source file (builds without -trimpath).
func buildScript() (string, error) {
	const rel = "tests/tools/build.sh"
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			p := filepath.Join(dir, rel)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("find tests/tools/build.sh: not above the working directory nor this source file")
}

// Proc is one server process started by Start.
type Proc struct {
	Name string
	Cmd  *exec.Cmd

	done chan struct{}
	err  error // set before done closes
}

// Start starts cmd with its output into w. The process gets SIGKILL if the test process
// dies, so a crashed test leaves no server behind (netns.StartTied).
func Start(name string, cmd *exec.Cmd, w io.Writer) (*Proc, error) {
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = w, w
	err := netns.StartTied(cmd, func(err error) {
		p.err = err
		close(p.done)
	})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitError describes how an exited process ended.
func (p *Proc) ExitError() error {
	if p.err != nil {
		return fmt.Errorf("%s exited: %w", p.Name, p.err)
	}
	return fmt.Errorf("%s exited", p.Name)
}

// Stop sends sig, waits up to grace, then kills. It returns nil when the process ended
// because of the stop, whatever its exit status.
func (p *Proc) Stop(sig syscall.Signal, grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	if err := p.Cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", p.Name, err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// WaitFor polls check (each call bounded by checkTimeout) every interval until it
// returns nil; it fails early when the process exits or ctx ends, with check's last
// error.
func (p *Proc) WaitFor(ctx context.Context, interval, checkTimeout time.Duration, check func(context.Context) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		last := check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w (last check: %v)", p.ExitError(), last)
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %v)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// ErrClosed is returned (wrapped) by Workspace.Start after Close.
var ErrClosed = errors.New("harness closed")

// Workspace is what a harness of server processes holds for its life: a directory (a
// temporary one, removed by Close, when none is given), a context for the processes'
// commands that Close cancels, the log files, and the processes, which Close stops.
type Workspace struct {
	Dir string
	Ctx context.Context

	cancel    context.CancelFunc
	removeDir bool
	stopGrace time.Duration
	mu        sync.Mutex
	logs      []*os.File
	procs     []*Proc
	closed    bool
}

// NewWorkspace uses dir, or a new temporary directory named after prefix when dir is "".
// Close gives each process stopGrace after SIGTERM.
func NewWorkspace(dir, prefix string, stopGrace time.Duration) (*Workspace, error) {
	w := &Workspace{Dir: dir, stopGrace: stopGrace}
	if w.Dir == "" {
		var err error
		if w.Dir, err = os.MkdirTemp("", prefix); err != nil {
			return nil, fmt.Errorf("create temporary directory: %w", err)
		}
		w.removeDir = true
	}
	w.Ctx, w.cancel = context.WithCancel(context.Background())
	return w, nil
}

// Log opens (appending) the log file path and returns it teed with tail.
func (w *Workspace) Log(path string, tail io.Writer) (io.Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", path, err)
	}
	w.mu.Lock()
	w.logs = append(w.logs, f)
	w.mu.Unlock()
	return io.MultiWriter(tail, f), nil
}

// Start is the package's Start for a process that Close stops; after Close it fails
// with ErrClosed. Build cmd with Ctx.
func (w *Workspace) Start(name string, cmd *exec.Cmd, out io.Writer) (*Proc, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, fmt.Errorf("start %s: %w", name, ErrClosed)
	}
	p, err := Start(name, cmd, out)
	if err != nil {
		return nil, err
	}
	w.procs = append(w.procs, p)
	return p, nil
}

// Closed reports whether Close was called.
func (w *Workspace) Closed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// Close stops the processes, newest first (TERM, then KILL after the grace period),
// cancels Ctx, closes the logs and removes Dir if it is temporary. It is idempotent.
func (w *Workspace) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	procs, logs := w.procs, w.logs
	w.logs = nil
	w.mu.Unlock()
	var errs []error
	for _, p := range slices.Backward(procs) {
		errs = append(errs, p.Stop(syscall.SIGTERM, w.stopGrace))
	}
	w.cancel()
	for _, f := range logs {
		errs = append(errs, f.Close())
	}
	if w.removeDir {
		if err := os.RemoveAll(w.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", w.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// WithDefaultTimeout bounds waits for servers that neither start nor exit, when the
// caller gave ctx no deadline.
func WithDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// FreeLoopbackPorts returns n distinct TCP ports free on 127.0.0.1 right now.
func FreeLoopbackPorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// EnsureAsRoot is for a TestMain before netns.EnterPrivate: as root (where the tests that
// need a harness's binaries run) it calls the harness's EnsureBinaries with a deadline of
// limit. In the outer process that may build them; in the re-executed child, where the
// module proxy is unreachable, it only finds what the outer one built.
func EnsureAsRoot[B any](limit time.Duration, ensure func(context.Context) (B, error)) error {
	if os.Geteuid() != 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	_, err := ensure(ctx)
	return err
}

// Harness is a started set of server processes, such as a Kubernetes cluster or a SPIRE
// server.
type Harness interface {
	Logs() string
	Close() error
}

// CloseOnError is deferred by a harness's start function with its named error result:
// when the start failed, it appends the processes' output to the error and closes h.
func CloseOnError(err *error, h Harness) {
	if *err == nil {
		return
	}
	if logs := h.Logs(); logs != "" {
		*err = fmt.Errorf("%w\n%s", *err, logs)
	}
	_ = h.Close()
}

// StartForTest calls start, failing tb if it fails, and closes what it started at tb's
// cleanup, after logging the processes' output if the test failed. what names the harness
// in messages.
func StartForTest[H Harness](tb testing.TB, what string, start func() (H, error)) H {
	tb.Helper()
	h, err := start()
	if err != nil {
		tb.Fatalf("start %s: %v", what, err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("%s logs:\n%s", what, h.Logs())
		}
		if err := h.Close(); err != nil {
			tb.Errorf("close %s: %v", what, err)
		}
	})
	return h
}
