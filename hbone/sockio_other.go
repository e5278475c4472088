//go:build !unix

package hbone

import (
	"io"
	"net"
)

func sockIO(nc net.Conn) io.ReadWriter { return nc }
