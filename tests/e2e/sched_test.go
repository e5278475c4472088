package e2e

import (
	"context"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

// TestSchedulerAdapts: with the default -gomaxprocs=auto both ztunnels run on one P at
// rest, node1 takes the runtime's default while parallel bulk streams queue for its P,
// and goes back to one P once they are done.
func TestSchedulerAdapts(t *testing.T) {
	requireMesh(t)
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU here: the runtime's default is one P, nothing to adapt")
	}
	waitProcs := func(node int, what string, ok func(float64) bool, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			v := metricValue(t, node, "go_sched_gomaxprocs_threads")
			if ok(v) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node%d: GOMAXPROCS %v after %v, want %s", node+1, v, within, what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	one := func(v float64) bool { return v == 1 }
	// Earlier tests may have left a ztunnel busy; it returns to one P 2 s after.
	for node := range 2 {
		waitProcs(node, "1 at rest", one, 15*time.Second)
	}
	before := metricValue(t, 0, "ambit_gomaxprocs_changes_total")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			if err := stream(ctx, client, podAddr(echoA).String()); err != nil {
				errs <- err
			}
		})
	}
	waitProcs(0, "more than 1 under eight bulk streams", func(v float64) bool { return v > 1 }, 30*time.Second)
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("bulk stream: %v", err)
	}
	waitProcs(0, "1 again after the streams", one, 15*time.Second)
	if d := metricValue(t, 0, "ambit_gomaxprocs_changes_total") - before; d < 2 {
		t.Fatalf("ambit_gomaxprocs_changes_total rose by %v, want at least 2 (up and down)", d)
	}
}

// stream sends zeros through the mesh to an echo server and reads the echo until ctx
// ends, then half-closes and drains.
func stream(ctx context.Context, from *netns.Pod, addr string) error {
	c, err := from.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			if _, err := c.Write(buf); err != nil {
				werr <- err
				return
			}
		}
		werr <- c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.Copy(io.Discard, c); err != nil {
		return err
	}
	return <-werr
}
