// Package logbuf batches log output. A node tunnel logs one line per connection; written
// one by one, each line is a write(2) to a pipe and a wake-up of whatever reads it (the
// container runtime, a log shipper), which at thousands of connections per second costs
// more than the line itself. Writer collects lines and writes them in batches, at most
// one flush interval late, like Envoy's access-log flush interval.
package logbuf

import (
	"io"
	"sync"
	"time"
)

// Writer is an io.Writer that buffers what it is given and writes it to the underlying
// writer when Size bytes are waiting, when Interval has passed since the oldest waiting
// byte arrived, or on Flush and Close. Each Write is kept whole (a log handler writes one
// record per call), so lines are never split between batches. Safe for concurrent use.
type Writer struct {
	out      io.Writer
	interval time.Duration
	size     int

	mu     sync.Mutex
	buf    []byte
	timer  *time.Timer
	armed  bool
	closed bool
}

// New returns a Writer over out. interval <= 0 disables buffering: every Write goes
// straight through.
func New(out io.Writer, interval time.Duration, size int) *Writer {
	w := &Writer{out: out, interval: interval, size: max(size, 1)}
	w.timer = time.AfterFunc(time.Hour, w.onTimer)
	w.timer.Stop()
	return w
}

// Write buffers p. It returns the underlying writer's error only when it writes.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.interval <= 0 {
		return w.out.Write(p)
	}
	w.buf = append(w.buf, p...)
	if len(w.buf) >= w.size {
		return len(p), w.flushLocked()
	}
	if !w.armed {
		w.armed = true
		w.timer.Reset(w.interval)
	}
	return len(p), nil
}

func (w *Writer) onTimer() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = false
	_ = w.flushLocked() // nowhere to report it; the next flush tries again
}

func (w *Writer) flushLocked() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.out.Write(w.buf)
	w.buf = w.buf[:0]
	if cap(w.buf) > 4*w.size {
		w.buf = nil // a burst grew it: do not pin the memory
	}
	return err
}

// Flush writes what is buffered now.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

// Close flushes and makes later writes go straight through (so nothing logged during
// shutdown is lost). It does not close the underlying writer. Idempotent.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	w.timer.Stop()
	w.armed = false
	return w.flushLocked()
}
