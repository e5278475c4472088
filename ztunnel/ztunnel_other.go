//go:build !linux

package ztunnel

import "errors"

func (z *Ztunnel) platformDefaults() error {
	if z.newCapture == nil || z.hostInterface == nil || z.listen == nil || z.dialT == nil {
		return errors.New("ztunnel: transparent capture needs Linux")
	}
	return nil
}
