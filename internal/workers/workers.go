// Package workers runs short-lived tasks, such as a connection's handler, on reused
// goroutines.
package workers

import (
	"sync"
	"sync/atomic"
)

// Pool hands each task to a parked goroutine, or starts one when none is parked. A
// connection handler grows its goroutine's stack to several times the initial size; on
// a new goroutine per connection that growth (a copy of the stack each time it doubles)
// was 6-9 % of ztunnel's user CPU in a connection-churn benchmark.
type Pool struct {
	work    chan func()
	done    chan struct{}
	once    sync.Once
	idle    atomic.Int32
	maxIdle int32
}

// New returns a pool that keeps at most maxIdle goroutines parked between tasks.
func New(maxIdle int) *Pool {
	return &Pool{work: make(chan func()), done: make(chan struct{}), maxIdle: int32(maxIdle)}
}

// Go runs f on a parked goroutine, or on a new one. It never blocks.
func (p *Pool) Go(f func()) {
	select {
	case p.work <- f:
	default:
		go p.run(f)
	}
}

func (p *Pool) run(f func()) {
	for {
		f()
		if p.idle.Add(1) > p.maxIdle {
			p.idle.Add(-1)
			return
		}
		select {
		case f = <-p.work:
			p.idle.Add(-1)
		case <-p.done:
			p.idle.Add(-1)
			return
		}
	}
}

// Close ends the parked goroutines; running tasks finish and their goroutines end after
// them. Go still works after Close, on a new goroutine per task. Close is idempotent.
func (p *Pool) Close() {
	p.once.Do(func() { close(p.done) })
}
