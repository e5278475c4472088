//go:build unix

package hbone

import (
	"io"
	"net"
	"testing"

	"github.com/ambitmesh/ambit/internal/relay/relaytest"
	"github.com/ambitmesh/ambit/internal/sockio"
)

func TestSockIOPicksRawSocket(t *testing.T) {
	a, _ := relaytest.TCPPair(t)
	if _, ok := sockIO(a).(sockio.Raw); !ok {
		t.Errorf("sockIO(*net.TCPConn) = %T, want sockio.Raw", sockIO(a))
	}
	if _, ok := sockIO(a).(pairWriter); !ok {
		t.Errorf("sockIO(*net.TCPConn) = %T, not a pairWriter", sockIO(a))
	}
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if got := sockIO(p); got != io.ReadWriter(p) {
		t.Errorf("sockIO(pipe) = %T, want the pipe itself", got)
	}
}
