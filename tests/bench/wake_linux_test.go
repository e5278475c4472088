package main

import (
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkWakeUp measures what one hand-off between two threads costs on this
// machine: a 1-byte ping-pong over a Unix socket pair, each side blocking in read,
// with the two threads on different CPUs and on the same one. Every hop of a
// connection through a relay is such a hand-off between processes; on a VM whose
// idle vCPUs halt, the cross-CPU one is far dearer (docs/performance.md).
//
//	go test ./tests/bench -run '^$' -bench WakeUp
func BenchmarkWakeUp(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skip("needs two CPUs")
	}
	for _, tc := range []struct {
		name       string
		ping, pong int
	}{
		{"cross-cpu", 0, 1},
		{"same-cpu", 0, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer syscall.Close(fds[0])
			defer syscall.Close(fds[1])
			done := make(chan error, 1)
			go func() {
				done <- pinned(tc.pong, func() error {
					buf := make([]byte, 1)
					for {
						if n, err := syscall.Read(fds[1], buf); err != nil || n == 0 {
							return err
						}
						if _, err := syscall.Write(fds[1], buf); err != nil {
							return err
						}
					}
				})
			}()
			err = pinned(tc.ping, func() error {
				buf := make([]byte, 1)
				b.ResetTimer()
				for b.Loop() {
					if _, err := syscall.Write(fds[0], buf); err != nil {
						return err
					}
					if _, err := syscall.Read(fds[0], buf); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			syscall.Shutdown(fds[0], syscall.SHUT_WR)
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// pinned runs f on a thread of its own bound to cpu.
func pinned(cpu int, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var prev unix.CPUSet
	if err := unix.SchedGetaffinity(0, &prev); err != nil {
		return err
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return err
	}
	defer unix.SchedSetaffinity(0, &prev)
	return f()
}
