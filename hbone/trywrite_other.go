//go:build !unix

package hbone

import "syscall"

// rawTryWriterFor: without a non-blocking write(2) here, WriteTo writes everything itself.
func rawTryWriterFor(syscall.RawConn) TryWriter { return nil }
