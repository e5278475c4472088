package workers

import (
	"bytes"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// workers counts the goroutines running Pool.run.
func workers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("workers.(*Pool).run("))
}

// settle waits until want goroutines run Pool.run (a worker parks, or ends,
// asynchronously after its task).
func settle(tb testing.TB, want int) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for workers() != want {
		if time.Now().After(deadline) {
			tb.Fatalf("worker goroutines: got %d, want %d", workers(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReusesParkedGoroutine(t *testing.T) {
	p := New(4)
	defer p.Close()
	for range 100 {
		done := make(chan struct{})
		p.Go(func() { close(done) })
		<-done
		settle(t, 1) // one worker, parked again after each task
	}
}

func TestKeepsAtMostMaxIdle(t *testing.T) {
	tests := []struct {
		name             string
		maxIdle, running int
		wantParked       int
	}{
		{"fewer tasks than the cap", 8, 3, 3},
		{"more tasks than the cap", 3, 10, 3},
		{"no parking", 0, 5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(tt.maxIdle)
			release := make(chan struct{})
			var started sync.WaitGroup
			started.Add(tt.running)
			for range tt.running {
				p.Go(func() { started.Done(); <-release })
			}
			started.Wait()
			settle(t, tt.running)
			close(release)
			settle(t, tt.wantParked)
			p.Close()
			settle(t, 0)
		})
	}
}

func TestCloseEndsParkedGoroutines(t *testing.T) {
	p := New(4)
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(2)
	for range 2 {
		p.Go(func() { started.Done(); <-release })
	}
	started.Wait()
	p.Close()
	p.Close()    // idempotent
	settle(t, 2) // running tasks are not interrupted
	close(release)
	settle(t, 0)

	// Go still runs tasks after Close, each on a goroutine that ends with it.
	done := make(chan struct{})
	p.Go(func() { close(done) })
	<-done
	settle(t, 0)
}
