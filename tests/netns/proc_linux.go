package netns

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 5 * time.Second

// outputCap bounds the output a Proc keeps (the tail is what failure messages need).
const outputCap = 256 << 10

// Proc is a process started through Topology.Start, killed on Topology.Close.
type Proc struct {
	Cmd *exec.Cmd

	out     *TailBuffer
	done    chan struct{}
	waitErr error
	mu      sync.Mutex
	signal  bool // we sent TERM/KILL: a death by signal is expected
}

// Start starts cmd (for example from NS.Command) and tracks it for Close. Unset Stdout and
// Stderr are captured for Output.
func (t *Topology) Start(cmd *exec.Cmd) (*Proc, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errors.New("start process: topology closed")
	}
	t.mu.Unlock()
	p := &Proc{Cmd: cmd, out: &TailBuffer{Max: outputCap}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.out
	}
	if cmd.WaitDelay == 0 {
		// A grandchild holding the output pipe must not block Wait forever.
		cmd.WaitDelay = 2 * time.Second
	}
	err := StartTied(cmd, func(err error) {
		p.waitErr = err
		close(p.done)
	})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	t.mu.Lock()
	closed := t.closed
	if !closed {
		t.procs = append(t.procs, p)
	}
	t.mu.Unlock()
	if closed {
		_ = p.Kill()
		return nil, errors.New("start process: topology closed")
	}
	return p, nil
}

// StartTied starts cmd so that it cannot outlive the test binary, and calls exited with
// cmd.Wait's result once the process has ended. A test binary that dies (a panic skips
// every cleanup) must not leave its processes running: they get SIGKILL when the thread
// that forked them exits (Pdeathsig), so the fork and the wait happen on one locked
// thread that lives exactly as long as the process.
func StartTied(cmd *exec.Cmd, exited func(error)) error {
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
		exited(cmd.Wait())
	}()
	return <-started
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM, waits up to StopTimeout, then SIGKILL. It returns nil when the
// process ended from our signal or exited 0, else the exit error.
func (p *Proc) Stop() error {
	if p.exited() {
		return p.result()
	}
	p.send(unix.SIGTERM)
	select {
	case <-p.done:
		return p.result()
	case <-time.After(StopTimeout):
	}
	return p.Kill()
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() error {
	if !p.exited() {
		p.send(unix.SIGKILL)
	}
	<-p.done
	return p.result()
}

// Wait waits for the process to exit on its own and returns its exit error.
func (p *Proc) Wait() error {
	<-p.done
	return p.waitErr
}

// Output returns the captured stdout and stderr so far (the last 256 KiB).
func (p *Proc) Output() string { return p.out.String() }

func (p *Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *Proc) send(sig syscall.Signal) {
	p.mu.Lock()
	p.signal = true
	p.mu.Unlock()
	// The process is reaped only by our Wait goroutine, so the PID is still ours here.
	_ = p.Cmd.Process.Signal(sig)
}

func (p *Proc) result() error {
	p.mu.Lock()
	signalled := p.signal
	p.mu.Unlock()
	var ee *exec.ExitError
	if signalled && errors.As(p.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return nil
		}
	}
	return p.waitErr
}

// TailBuffer keeps the last Max bytes written to it, for failure messages.
type TailBuffer struct {
	Max int

	mu      sync.Mutex
	buf     []byte
	dropped int64
}

func (b *TailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.Max; over > 0 {
		b.dropped += int64(over)
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

// String returns what is kept, after a line counting the dropped bytes if any were.
func (b *TailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped > 0 {
		return fmt.Sprintf("[... %d bytes dropped ...]\n%s", b.dropped, b.buf)
	}
	return string(b.buf)
}
