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

// The runtime's network poller, reached the way internal/poll reaches it. What this
// relies on, and what it does not have:
//
//   - The symbols. runtime/netpoll.go defines poll_runtime_pollServerInit, _pollOpen,
//     _pollClose, _pollWait, _pollReset, _pollSetDeadline and _pollUnblock, each with
//     "//go:linkname poll_runtime_pollX internal/poll.runtime_pollX": the runtime pushes
//     them into internal/poll, which declares them without bodies in
//     internal/poll/fd_poll_runtime.go. The declarations below pull the same
//     internal/poll names. Where the runtime says *pollDesc, internal/poll and this file
//     say uintptr.
//   - Why they link. Since Go 1.23 (go.dev/issue/67401) the linker's -checklinkname,
//     on by default, refuses a pull of a standard-library symbol unless the symbol's
//     definition carries a go:linkname of its own (is pushed) and the symbol is not in
//     the linker's blockedLinknames table (names allowed only to the packages listed
//     there). These are pushed and not listed, so they link.
//   - No promise. They are the runtime's private contract with internal/poll. The
//     symbols the runtime keeps for outside packages say so in a comment naming the
//     packages and asking that the signature not change; these carry none, and Go's
//     compatibility promise does not cover them. A release may rename, remove or
//     re-type them, change the mode or error codes, or list them in blockedLinknames.
//   - What breaks, and how it shows. A rename, removal or listing fails the build at
//     link time (an undefined symbol, or "invalid reference to
//     internal/poll.runtime_pollOpen"). A changed signature or code still links,
//     because go:linkname checks no types, and would corrupt at run time:
//     TestPollLinknames compares the declarations and codes here with the sources of
//     the toolchain running the test (internal/poll's declarations and the runtime's
//     definitions and pushes) and fails on any difference; it needs no root.
//     -ldflags=-checklinkname=0 would only hide a listing, not fix what it means.
//   - The way out. SocketsStd makes the same sockets with the net package and needs
//     none of this.
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

// The poller's answers (runtime/netpoll.go; TestPollLinknames checks them).
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
// (docs/performance.md, "Design decisions of the fast paths").
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
