package redirect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/ambitmesh/ambit/internal/sockio"
)

// Socket is a proxied TCP connection (captured and accepted by a Listener, or dialed to
// a pod by DialTransparent) that this package set up itself, with raw system calls from
// socket to close, on Go's poller through a pollFD. The net package and os.File make the
// same calls through the runtime's system-call path, and the first such call after a
// process went idle wakes the runtime's sysmon thread, which then naps every 20 us while
// the process is busy: at light load once per connection and tunnel end
// (docs/performance.md, "Raw system calls, own poller entry").
//
// Socket implements net.Conn plus CloseWrite, CloseRead and syscall.Conn.
type Socket struct {
	pfd          *pollFD
	laddr, raddr *net.TCPAddr
}

var aLongTimeAgo = time.Unix(1, 0)

// dialSocket connects to dst from src, which need not be local (IP_TRANSPARENT), and an
// ephemeral port. The connect is bounded by ctx.
func dialSocket(ctx context.Context, src netip.Addr, dst netip.AddrPort) (*Socket, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := boundSocket(netip.AddrPortFrom(src, 0), dialOpts)
	if err != nil {
		return nil, err
	}
	sa := sockaddr4(dst)
	switch e := sockio.Connect4(fd, &sa); e {
	case 0, syscall.EINPROGRESS, syscall.EALREADY, syscall.EINTR:
	default:
		sockio.Close(fd)
		return nil, os.NewSyscallError("connect", e)
	}

	s, err := newSocket(fd, net.TCPAddrFromAddrPort(dst))
	if err != nil {
		return nil, err
	}
	pfd := s.pfd
	if d, ok := ctx.Deadline(); ok {
		pfd.SetDeadline(d, 'w')
	}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { pfd.SetDeadline(aLongTimeAgo, 'w') })
	}
	var soErr syscall.Errno
	err = pfd.RawWrite(func(fd uintptr) bool {
		v, e := sockio.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if e != 0 {
			soErr = e
			return true
		}
		switch e := syscall.Errno(v); e {
		case syscall.EINPROGRESS, syscall.EALREADY, syscall.EINTR:
			return false
		case 0, syscall.EISCONN:
			// The poller may report writable before the connection is up: ask.
			var rsa syscall.RawSockaddrAny
			return sockio.Getpeername(fd, &rsa) != syscall.ENOTCONN
		default:
			soErr = e
			return true
		}
	})
	stop()
	if err != nil && ctx.Err() != nil {
		err = ctx.Err() // the deadline or cancellation, not the poller's timeout
	}
	if err == nil && soErr != 0 {
		err = os.NewSyscallError("connect", soErr)
	}
	if err != nil {
		pfd.Close()
		return nil, err
	}
	pfd.SetDeadline(time.Time{}, 'w')
	s.laddr = localAddr(fd)
	return s, nil
}

// boundSocket makes a non-blocking IPv4 TCP socket with opts set, bound to addr; on
// error nothing is left open.
func boundSocket(addr netip.AddrPort, opts []sockOpt) (uintptr, error) {
	fd, errno := sockio.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if errno != 0 {
		return 0, os.NewSyscallError("socket", errno)
	}
	fail := func(op string, e syscall.Errno) (uintptr, error) {
		sockio.Close(fd)
		return 0, os.NewSyscallError(op, e)
	}
	for _, o := range opts {
		if e := sockio.SetsockoptInt(fd, o.level, o.opt, o.val); e != 0 {
			return fail("setsockopt "+o.name, e)
		}
	}
	sa := sockaddr4(addr)
	if e := sockio.Bind4(fd, &sa); e != 0 {
		return fail("bind", e)
	}
	return fd, nil
}

// newSocket hands the connected or connecting descriptor fd to Go's poller; on error fd
// is closed. A Socket dropped without Close is closed when collected, as an os.File is.
func newSocket(fd uintptr, raddr *net.TCPAddr) (*Socket, error) {
	pfd, err := newPollFD(fd)
	if err != nil {
		return nil, err
	}
	s := &Socket{pfd: pfd, raddr: raddr}
	runtime.AddCleanup(s, func(p *pollFD) { p.Close() }, pfd)
	return s, nil
}

func sockaddr4(ap netip.AddrPort) syscall.RawSockaddrInet4 {
	sa := syscall.RawSockaddrInet4{Family: syscall.AF_INET, Addr: ap.Addr().Unmap().As4()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	return sa
}

func ntohs(port uint16) uint16 {
	p := (*[2]byte)(unsafe.Pointer(&port))
	return uint16(p[0])<<8 | uint16(p[1])
}

func (s *Socket) opErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrClosed) || s.pfd.closing() {
		err = net.ErrClosed
	} else if pe, ok := err.(*os.PathError); ok {
		err = pe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.laddr, Addr: s.raddr, Err: err}
}

func (s *Socket) Read(p []byte) (int, error) {
	n, err := s.pfd.Read(p)
	if err != nil && err != io.EOF {
		err = s.opErr("read", err)
	}
	return n, err
}

func (s *Socket) Write(p []byte) (int, error) {
	n, err := s.pfd.Write(p)
	return n, s.opErr("write", err)
}

// Close closes the socket.
func (s *Socket) Close() error {
	return s.opErr("close", s.pfd.Close())
}

// CloseWrite shuts down the writing side: the peer reads EOF.
func (s *Socket) CloseWrite() error { return s.shutdown(syscall.SHUT_WR) }

// CloseRead shuts down the reading side.
func (s *Socket) CloseRead() error { return s.shutdown(syscall.SHUT_RD) }

// SetLinger sets SO_LINGER as (*net.TCPConn).SetLinger does: sec < 0 (the default)
// closes in the background, 0 resets the connection on Close.
func (s *Socket) SetLinger(sec int) error {
	l := syscall.Linger{}
	if sec >= 0 {
		l.Onoff, l.Linger = 1, int32(sec)
	}
	var errno syscall.Errno
	err := s.pfd.Control(func(fd uintptr) { errno = sockio.SetsockoptLinger(fd, &l) })
	if err == nil && errno != 0 {
		err = os.NewSyscallError("setsockopt SO_LINGER", errno)
	}
	return s.opErr("set", err)
}

func (s *Socket) shutdown(how int) error {
	var errno syscall.Errno
	err := s.pfd.Control(func(fd uintptr) { errno = sockio.Shutdown(fd, how) })
	if err == nil && errno != 0 {
		err = os.NewSyscallError("shutdown", errno)
	}
	return s.opErr("shutdown", err)
}

func (s *Socket) LocalAddr() net.Addr  { return s.laddr }
func (s *Socket) RemoteAddr() net.Addr { return s.raddr }

func (s *Socket) SetDeadline(t time.Time) error     { return s.opErr("set", s.pfd.SetDeadline(t, 'r'+'w')) }
func (s *Socket) SetReadDeadline(t time.Time) error { return s.opErr("set", s.pfd.SetDeadline(t, 'r')) }
func (s *Socket) SetWriteDeadline(t time.Time) error {
	return s.opErr("set", s.pfd.SetDeadline(t, 'w'))
}

// SyscallConn gives access to the descriptor, with the poller's waits. After Close its
// methods return net.ErrClosed, as a net.Conn's do.
func (s *Socket) SyscallConn() (syscall.RawConn, error) { return rawConn{s}, nil }

type rawConn struct{ s *Socket }

func (c rawConn) Control(f func(fd uintptr)) error    { return c.err(c.s.pfd.Control(f)) }
func (c rawConn) Read(f func(fd uintptr) bool) error  { return c.err(c.s.pfd.RawRead(f)) }
func (c rawConn) Write(f func(fd uintptr) bool) error { return c.err(c.s.pfd.RawWrite(f)) }

// err maps the closed-descriptor error to the net package's.
func (c rawConn) err(err error) error {
	if err != nil && c.s.pfd.closing() {
		return net.ErrClosed
	}
	return err
}

// Listener accepts connections as Sockets. It owns its listening socket, made with raw
// system calls like a Socket (the net package's listener offers no wait for
// readability through SyscallConn), and so do accept4 and the accepted socket's setup.
type Listener struct {
	f      *os.File
	rc     syscall.RawConn
	addr   *net.TCPAddr
	closed atomic.Bool
}

// listenSocket listens on the IPv4 address addr with the given options set first.
func listenSocket(addr netip.AddrPort, opts []sockOpt) (*Listener, error) {
	fd, err := boundSocket(addr, opts)
	if err != nil {
		return nil, err
	}
	if e := sockio.Listen(fd, listenBacklog); e != 0 {
		sockio.Close(fd)
		return nil, os.NewSyscallError("listen", e)
	}
	l := &Listener{f: os.NewFile(fd, "tcp-listener"), addr: localAddr(fd)}
	if l.rc, err = l.f.SyscallConn(); err != nil {
		l.f.Close()
		return nil, err
	}
	return l, nil
}

// listenBacklog is the kernel's cap (net.core.somaxconn) on recent kernels.
const listenBacklog = 4096

type sockOpt struct {
	level, opt, val int
	name            string
}

// Accept waits for the next connection and returns it as a *Socket.
func (l *Listener) Accept() (net.Conn, error) {
	var (
		nfd   uintptr
		errno syscall.Errno
		rsa   syscall.RawSockaddrAny
	)
	err := l.rc.Read(func(fd uintptr) bool {
		for {
			r, e := sockio.Accept4(fd, &rsa, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
			switch e {
			case 0:
				nfd = r
				return true
			case syscall.EAGAIN:
				return false // wait for the next one
			case syscall.ECONNABORTED:
				continue // gone before it was accepted
			default:
				errno = e
				return true
			}
		}
	})
	if err != nil && l.closed.Load() {
		err = net.ErrClosed
	}
	if err == nil && errno != 0 {
		err = os.NewSyscallError("accept4", errno)
	}
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
	}
	if e := sockio.SetsockoptInt(nfd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); e != 0 {
		sockio.Close(nfd)
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: os.NewSyscallError("setsockopt TCP_NODELAY", e)}
	}
	s, err := newSocket(nfd, tcpAddrOf(&rsa))
	if err != nil {
		return nil, err
	}
	s.laddr = localAddr(nfd)
	return s, nil
}

// Close stops accepting; a waiting Accept returns net.ErrClosed.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
	return l.f.Close()
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.addr }

func localAddr(fd uintptr) *net.TCPAddr {
	var rsa syscall.RawSockaddrAny
	if e := sockio.Getsockname(fd, &rsa); e != 0 {
		return &net.TCPAddr{}
	}
	return tcpAddrOf(&rsa)
}

func tcpAddrOf(rsa *syscall.RawSockaddrAny) *net.TCPAddr {
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(rsa))
		ip := make(net.IP, net.IPv4len) // 4 bytes, as the net package's: AddrPort is not v4-in-v6
		copy(ip, sa.Addr[:])
		return &net.TCPAddr{IP: ip, Port: int(ntohs(sa.Port))}
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(rsa))
		ip := make(net.IP, net.IPv6len)
		copy(ip, sa.Addr[:])
		return &net.TCPAddr{IP: ip, Port: int(ntohs(sa.Port))}
	}
	return &net.TCPAddr{}
}

// TCPConn turns s into a *net.TCPConn, for the net package's splice between two
// sockets. On success s is closed and the connection lives on in the returned one; on
// error s is left as it was.
func (s *Socket) TCPConn() (*net.TCPConn, error) {
	var (
		dup   uintptr
		errno syscall.Errno
	)
	if err := s.pfd.Control(func(fd uintptr) { dup, errno = sockio.DupCloexec(fd) }); err != nil {
		return nil, fmt.Errorf("socket to TCPConn: %w", s.opErr("dup", err))
	}
	if errno != 0 {
		return nil, fmt.Errorf("socket to TCPConn: %w", os.NewSyscallError("dup", errno))
	}
	f := os.NewFile(dup, "tcp")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("socket to TCPConn: %w", err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("socket to TCPConn: got %T", c)
	}
	s.Close() // the duplicate keeps the connection
	return tc, nil
}
