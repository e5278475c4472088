//go:build !linux

package hbone

import "syscall"

// readFromSocket leaves sockets to ReadFrom's generic path here.
func (s *stream) readFromSocket(syscall.RawConn, func(int64)) (int64, bool, error) {
	return 0, false, nil
}
