package redirect

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	_ "unsafe" // go:linkname

	"github.com/ambitmesh/ambit/internal/sockio"
)

// The runtime's network poller, as internal/poll uses it. The runtime exports these
// names itself (go.dev/issue/67401 keeps their signatures), so the linker allows them.
//
//go:linkname runtime_pollServerInit internal/poll.runtime_pollServerInit
func runtime_pollServerInit()

//go:linkname runtime_pollOpen internal/poll.runtime_pollOpen
func runtime_pollOpen(fd uintptr) (uintptr, int)

//go:linkname runtime_pollClose internal/poll.runtime_pollClose
func runtime_pollClose(ctx uintptr)

//go:linkname runtime_pollWait internal/poll.runtime_pollWait
func runtime_pollWait(ctx uintptr, mode int) int

//go:linkname runtime_pollReset internal/poll.runtime_pollReset
func runtime_pollReset(ctx uintptr, mode int) int

//go:linkname runtime_pollSetDeadline internal/poll.runtime_pollSetDeadline
func runtime_pollSetDeadline(ctx uintptr, d int64, mode int)

//go:linkname runtime_pollUnblock internal/poll.runtime_pollUnblock
func runtime_pollUnblock(ctx uintptr)

// The poller's answers (runtime/netpoll.go).
const (
	pollNoError        = 0
	pollErrClosing     = 1
	pollErrTimeout     = 2
	pollErrNotPollable = 3
)

var pollInit sync.Once

// pollFD is a non-blocking descriptor on the runtime's network poller, as an os.File or
// a net.Conn holds one, except that every system call on it is raw, the final close
// included. The runtime's own system-call path wakes its sysmon thread when it is the
// first call after the process went idle, and sysmon then naps every 20 us while the
// process is busy: with os.File, each proxied connection's close did that at light load
// (docs/performance.md, round 10).
type pollFD struct {
	fd int
	pd uintptr // the runtime's poll descriptor

	// state counts references (2 each: the open descriptor holds one, every operation
	// in progress another) and has bit 0 set once Close began. The last reference
	// closes the descriptor, so no operation ever sees its number reused.
	state  atomic.Int64
	closed chan struct{} // closed with the descriptor

	// One waiter per direction: the poller parks at most one goroutine per mode.
	rmu, wmu sync.Mutex
}

var errNotPollable = errors.New("descriptor not pollable")

// newPollFD puts the non-blocking descriptor fd on the poller. On error fd is closed.
func newPollFD(fd uintptr) (*pollFD, error) {
	pollInit.Do(runtime_pollServerInit)
	pd, errno := runtime_pollOpen(fd)
	if errno != 0 {
		sockio.Close(fd)
		return nil, os.NewSyscallError("epoll_ctl", syscall.Errno(errno))
	}
	p := &pollFD{fd: int(fd), pd: pd, closed: make(chan struct{})}
	p.state.Store(2)
	return p, nil
}

func (p *pollFD) incref() error {
	for {
		s := p.state.Load()
		if s&1 != 0 {
			return os.ErrClosed
		}
		if p.state.CompareAndSwap(s, s+2) {
			return nil
		}
	}
}

func (p *pollFD) decref() {
	if p.state.Add(-2) == 1 {
		// Closing and nothing left in progress: waiters were unblocked and are gone.
		runtime_pollClose(p.pd)
		sockio.Close(uintptr(p.fd))
		close(p.closed)
	}
}

// closing reports whether Close has begun.
func (p *pollFD) closing() bool { return p.state.Load()&1 != 0 }

// Close wakes every operation waiting on the descriptor (they return os.ErrClosed) and
// returns once the descriptor is closed.
func (p *pollFD) Close() error {
	for {
		s := p.state.Load()
		if s&1 != 0 {
			return os.ErrClosed
		}
		if p.state.CompareAndSwap(s, s|1) {
			break
		}
	}
	runtime_pollUnblock(p.pd)
	p.decref() // the open descriptor's reference
	<-p.closed
	return nil
}

func pollErr(code int) error {
	switch code {
	case pollNoError:
		return nil
	case pollErrClosing:
		return os.ErrClosed
	case pollErrTimeout:
		return os.ErrDeadlineExceeded
	case pollErrNotPollable:
		return errNotPollable
	}
	return errors.New("unknown poller error")
}

// wait runs f until it reports done, waiting for the descriptor to be ready for mode
// ('r' or 'w') after each call that was not.
func (p *pollFD) wait(mode int, f func(fd uintptr) bool) error {
	if err := p.incref(); err != nil {
		return err
	}
	defer p.decref()
	mu := &p.rmu
	if mode == 'w' {
		mu = &p.wmu
	}
	mu.Lock()
	defer mu.Unlock()
	if err := pollErr(runtime_pollReset(p.pd, mode)); err != nil {
		return err
	}
	for !f(uintptr(p.fd)) {
		if err := pollErr(runtime_pollWait(p.pd, mode)); err != nil {
			return err
		}
	}
	return nil
}

// Control runs f with the descriptor, which stays open until f returns.
func (p *pollFD) Control(f func(fd uintptr)) error {
	if err := p.incref(); err != nil {
		return err
	}
	defer p.decref()
	f(uintptr(p.fd))
	return nil
}

func (p *pollFD) RawRead(f func(fd uintptr) bool) error  { return p.wait('r', f) }
func (p *pollFD) RawWrite(f func(fd uintptr) bool) error { return p.wait('w', f) }

func (p *pollFD) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, p.Control(func(uintptr) {})
	}
	op := sockio.ReadOp{P: b}
	return op.Result(p.wait('r', op.Try))
}

// Write writes all of b unless an error stops it.
func (p *pollFD) Write(b []byte) (int, error) {
	op := sockio.WriteOp{A: b}
	return op.Result(p.wait('w', op.Try))
}

// SetDeadline sets the deadline of mode: 'r', 'w' or 'r'+'w'. A zero t clears it.
func (p *pollFD) SetDeadline(t time.Time, mode int) error {
	if err := p.incref(); err != nil {
		return err
	}
	defer p.decref()
	var d int64
	if !t.IsZero() {
		if d = int64(time.Until(t)); d == 0 {
			d = -1 // passed, not "none"
		}
	}
	runtime_pollSetDeadline(p.pd, d, mode)
	return nil
}
