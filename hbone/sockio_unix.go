//go:build unix

package hbone

import (
	"io"
	"net"

	"github.com/ambitmesh/ambit/internal/sockio"
)

// sockIO returns what the record layer reads from and writes to: nc itself, or for a
// socket its descriptor through RawConn (which keeps the descriptor's locks, deadlines
// and Close semantics) with raw system calls (internal/sockio).
func sockIO(nc net.Conn) io.ReadWriter {
	if r, ok := sockio.Of(nc); ok {
		return r
	}
	return nc
}
