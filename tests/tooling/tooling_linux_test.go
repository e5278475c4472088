package tooling

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

// A workspace's Close stops its processes, removes its temporary directory, refuses new
// processes and is idempotent.
func TestWorkspaceClose(t *testing.T) {
	w, err := NewWorkspace("", "toolingtest-", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	out := &netns.TailBuffer{Max: 1 << 10}
	if _, err := w.Log(w.Dir+"/sleep.log", out); err != nil {
		t.Fatal(err)
	}
	p, err := w.Start("sleep", exec.CommandContext(w.Ctx, "sleep", "60"), out)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !p.Exited() {
		t.Error("process still running after Close")
	}
	if _, err := os.Stat(w.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory after Close: %v", err)
	}
	if w.Ctx.Err() == nil {
		t.Error("context not cancelled by Close")
	}
	if _, err := w.Start("sleep", exec.Command("sleep", "60"), out); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// WaitFor returns once the check passes, and with the exit and the last check's error when
// the process ends first.
func TestWaitFor(t *testing.T) {
	p, err := Start("sleep", exec.Command("sleep", "60"), &netns.TailBuffer{Max: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(syscall.SIGKILL, time.Second) })
	n := 0
	err = p.WaitFor(context.Background(), time.Millisecond, time.Second, func(context.Context) error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("WaitFor: %v after %d checks, want nil after 3", err, n)
	}

	q, err := Start("false", exec.Command("false"), &netns.TailBuffer{Max: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	err = q.WaitFor(context.Background(), time.Millisecond, time.Second, func(context.Context) error { return errors.New("never") })
	if err == nil || !strings.Contains(err.Error(), "false exited") || !strings.Contains(err.Error(), "never") {
		t.Errorf("WaitFor on an exiting process: %v", err)
	}
}
