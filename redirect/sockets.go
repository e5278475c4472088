package redirect

import (
	"fmt"
	"strings"
)

// SocketStack selects how the transparent listeners and dials (ListenTransparent,
// DialTransparent) make their sockets.
type SocketStack uint8

const (
	// SocketsRaw is the package's own stack: raw system calls from socket to close on
	// the runtime's poller (linked with go:linkname, see pollfd_linux.go), handing out
	// *Socket. The default: the runtime's system-call path wakes its sysmon thread at
	// light load, once per connection and tunnel end.
	SocketsRaw SocketStack = iota
	// SocketsStd is the standard library's: net.ListenConfig and net.Dialer, with the
	// same socket options set in their Control hooks, handing out *net.TCPConn. The
	// fallback should the raw stack break, and the reference to compare it with.
	SocketsStd
)

func (s SocketStack) String() string {
	switch s {
	case SocketsRaw:
		return "raw"
	case SocketsStd:
		return "std"
	}
	return fmt.Sprintf("SocketStack(%d)", uint8(s))
}

// ParseSocketStack parses "raw" or "std" (for flags); "" is the default, raw.
func ParseSocketStack(s string) (SocketStack, error) {
	switch strings.ToLower(s) {
	case "", "raw":
		return SocketsRaw, nil
	case "std":
		return SocketsStd, nil
	}
	return 0, fmt.Errorf("socket stack %q: want raw or std", s)
}
