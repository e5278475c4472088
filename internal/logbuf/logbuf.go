// Package logbuf batches log output. A node tunnel logs one line per connection; written
// one by one, each line is a write(2) to a pipe and a wake-up of whatever reads it (the
// container runtime, a log shipper), which at thousands of connections per second costs
// more than the line itself. Writer collects lines and writes them in batches, at most
// one flush interval late, like Envoy's access-log flush interval.
//
// Logging never waits for the output: lines are written by the Writer's own timer
// goroutine, and while the output is slower than the lines come (a stalled log reader),
// lines beyond a bound are dropped and counted rather than holding up the caller, which
// may be relaying traffic.
package logbuf

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Writer is an io.Writer that buffers what it is given and writes it to the underlying
// writer, from a goroutine of its own, when Size bytes are waiting, when Interval has
// passed since the oldest waiting byte arrived, or on Flush and Close. Each Write is
// kept whole (a log handler writes one record per call), so lines are never split
// between batches. Safe for concurrent use.
type Writer struct {
	out      io.Writer
	interval time.Duration
	size     int
	limit    int // bytes held at most while a write to out is slow

	flushMu sync.Mutex // held while writing to out: batches stay in order

	mu      sync.Mutex
	buf     []byte
	spare   []byte // the last batch's buffer, for reuse
	timer   *time.Timer
	armed   bool
	closed  bool
	writing bool // a batch is being written to out
	dropped atomic.Uint64
}

// New returns a Writer over out that writes batches of size bytes and holds up to limit
// bytes while a write to out is under way. The limit only guards memory against an
// output that stopped: a batch write that is merely slow to be scheduled on a busy
// machine must not reach it. interval <= 0 disables buffering: every Write goes
// straight through (and waits for out).
func New(out io.Writer, interval time.Duration, size, limit int) *Writer {
	size = max(size, 1)
	w := &Writer{out: out, interval: interval, size: size, limit: max(limit, size)}
	w.timer = time.AfterFunc(time.Hour, w.onTimer)
	w.timer.Stop()
	return w
}

// Write buffers p. It never waits for the underlying writer unless buffering is off or
// the Writer is closed; p is dropped (and counted, see Dropped) when a write to the
// underlying writer is under way and the bound of waiting bytes is reached.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || w.interval <= 0 {
		w.mu.Unlock()
		w.flushMu.Lock() // after a batch being written, not inside it
		defer w.flushMu.Unlock()
		return w.out.Write(p)
	}
	if w.writing && len(w.buf)+len(p) > w.limit {
		w.mu.Unlock()
		w.dropped.Add(1)
		return len(p), nil
	}
	if w.buf == nil {
		w.buf, w.spare = w.spare, nil
	}
	w.buf = append(w.buf, p...)
	switch {
	case len(w.buf) >= w.size:
		w.armed = true
		w.timer.Reset(0) // now, but not in the caller's goroutine
	case !w.armed:
		w.armed = true
		w.timer.Reset(w.interval)
	}
	w.mu.Unlock()
	return len(p), nil
}

// Dropped reports how many writes were dropped because the output was too slow.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

func (w *Writer) onTimer() {
	w.mu.Lock()
	w.armed = false
	w.mu.Unlock()
	_ = w.Flush() // nowhere to report it; the next flush tries again
}

// Flush writes what is buffered now.
func (w *Writer) Flush() error {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	w.mu.Lock()
	b := w.buf
	w.buf = nil
	w.writing = len(b) > 0
	w.mu.Unlock()
	if len(b) == 0 {
		return nil
	}
	_, err := w.out.Write(b)
	w.mu.Lock()
	w.writing = false
	if w.spare == nil && cap(b) <= 4*w.size { // a burst grew it: do not pin the memory
		w.spare = b[:0]
	}
	// What arrived during a slow write goes out next, without waiting for another line.
	if len(w.buf) >= w.size && !w.armed && !w.closed {
		w.armed = true
		w.timer.Reset(0)
	}
	w.mu.Unlock()
	return err
}

// Close flushes and makes later writes go straight through (so nothing logged during
// shutdown is lost). It does not close the underlying writer. Idempotent.
func (w *Writer) Close() error {
	w.mu.Lock()
	w.closed = true
	w.timer.Stop()
	w.armed = false
	w.mu.Unlock()
	return w.Flush()
}
