package logbuf

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// countingBuffer records each write it is given.
type countingBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (c *countingBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.b.Write(p)
}

func (c *countingBuffer) snapshot() (string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String(), c.writes
}

func TestWriterBatches(t *testing.T) {
	for _, tc := range []struct {
		name       string
		interval   time.Duration
		size       int
		lines      int
		wantWrites int // after the lines, in the writing goroutine
		wantAtOnce int // after the lines, once the Writer's goroutine ran, before any time passes
	}{
		{name: "unbuffered", interval: 0, size: 1024, lines: 10, wantWrites: 10},
		{name: "held until the interval", interval: 100 * time.Millisecond, size: 1 << 20, lines: 10, wantWrites: 0},
		// 13-byte lines: past 50 bytes a flush is due at once, in the Writer's goroutine.
		{name: "size threshold", interval: time.Hour, size: 50, lines: 10, wantWrites: 0, wantAtOnce: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				out := &countingBuffer{}
				w := New(out, tc.interval, tc.size, 1<<20)
				var want strings.Builder
				for i := range tc.lines {
					line := fmt.Sprintf("line %03d....\n", i)
					want.WriteString(line)
					if _, err := w.Write([]byte(line)); err != nil {
						t.Fatal(err)
					}
				}
				if _, n := out.snapshot(); n != tc.wantWrites {
					t.Fatalf("%d writes by the logging goroutine, want %d", n, tc.wantWrites)
				}
				synctest.Wait()
				if _, n := out.snapshot(); n != max(tc.wantWrites, tc.wantAtOnce) {
					t.Fatalf("%d writes before the interval, want %d", n, max(tc.wantWrites, tc.wantAtOnce))
				}
				if tc.interval > 0 && tc.interval < time.Hour {
					time.Sleep(tc.interval)
					synctest.Wait()
					if got, n := out.snapshot(); got != want.String() || n != 1 {
						t.Fatalf("after the interval: %d writes, output %q", n, got)
					}
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if got, _ := out.snapshot(); got != want.String() {
					t.Fatalf("after Close: output %q, want %q", got, want.String())
				}
				// After Close writes go straight through.
				_, before := out.snapshot()
				w.Write([]byte("late\n"))
				if got, n := out.snapshot(); n != before+1 || !strings.HasSuffix(got, "late\n") {
					t.Fatalf("write after Close not passed through: %d writes", n-before)
				}
				if err := w.Close(); err != nil {
					t.Fatalf("second Close: %v", err)
				}
			})
		})
	}
}

func TestWriterConcurrentLinesStayWhole(t *testing.T) {
	out := &countingBuffer{}
	w := New(out, time.Millisecond, 4096, 1<<20)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				fmt.Fprintf(w, "goroutine=%d line=%d end\n", g, i)
			}
		}()
	}
	wg.Wait()
	w.Close()
	got, _ := out.snapshot()
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 8*500 {
		t.Fatalf("%d lines, want %d", len(lines), 8*500)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "goroutine=") || !strings.HasSuffix(l, " end") {
			t.Fatalf("torn line %q", l)
		}
	}
}

// blockingWriter holds every write until released.
type blockingWriter struct {
	countingBuffer
	release chan struct{}
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	return b.countingBuffer.Write(p)
}

// A stalled output never holds up the logging goroutine: lines wait up to the bound,
// later ones are dropped and counted, and what waited goes out, in order, once the
// output moves again.
func TestWriterNeverWaitsForOutput(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		out := &blockingWriter{release: make(chan struct{})}
		var release sync.Once
		// A failed check must not leave the Writer's goroutine blocked.
		defer release.Do(func() { close(out.release) })
		w := New(out, time.Millisecond, 100, 1600)
		var want strings.Builder
		line := func(i int) string { return fmt.Sprintf("line %04d......\n", i) } // 16 bytes
		// The first batch, whose write to out then blocks.
		for i := range 10 {
			want.WriteString(line(i))
			w.Write([]byte(line(i)))
		}
		synctest.Wait()                // the Writer's goroutine is blocked in out.Write
		for i := 10; i < 10+100; i++ { // 100 lines fill the bound
			want.WriteString(line(i))
			w.Write([]byte(line(i)))
		}
		for i := range 5 { // these do not fit
			w.Write([]byte(line(1000 + i)))
		}
		if got := w.Dropped(); got != 5 {
			t.Fatalf("Dropped() = %d, want 5", got)
		}
		release.Do(func() { close(out.release) })
		synctest.Wait()
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if got, _ := out.snapshot(); got != want.String() {
			t.Fatalf("output %d bytes, want the %d bytes logged before the bound, in order", len(got), want.Len())
		}
	})
}
