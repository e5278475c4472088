//go:build !linux

package ztunnel

import (
	"errors"
	"net"
)

func (z *Ztunnel) platformDefaults() error {
	if z.newCapture == nil || z.hostInterface == nil || z.listen == nil || z.dialT == nil {
		return errors.New("ztunnel: transparent capture needs Linux")
	}
	return nil
}

// readReady is an optimisation only; elsewhere the pump reads everything.
func readReady(net.Conn, []byte) int { return 0 }
