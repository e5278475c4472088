// Package tooling is what the test harnesses for real components (tests/kube, tests/spire)
// share: finding or building their binaries in the versioned tool cache, and running server
// processes that cannot outlive the test.
package tooling

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
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
// dies, so a crashed test leaves no server behind. Pdeathsig fires when the forking *thread*
// exits, so the fork and the wait happen on one locked thread that lives exactly as long as
// the process.
func Start(name string, cmd *exec.Cmd, w io.Writer) (*Proc, error) {
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = w, w
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
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

// TailBuffer keeps the last Max bytes written, for failure messages.
type TailBuffer struct {
	Max int
	mu  sync.Mutex
	b   []byte
}

func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.Max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
