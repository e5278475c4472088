//go:build !unix

package sockio

// Without non-blocking raw system calls here, sockets are only written blocking.
func socketTryWriter(any) TryWriter { return nil }
