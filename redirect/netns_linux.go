package redirect

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// netnsRef is the network namespace a Capture was created in. Netlink requests, TCX
// attachment by ifindex and socket lookups all act on the calling thread's namespace, so
// every later operation runs there even when the caller's thread is elsewhere.
type netnsRef struct {
	fd       int
	dev, ino uint64
}

func currentNetns() (*netnsRef, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat current netns: %w", err)
	}
	return &netnsRef{fd: fd, dev: st.Dev, ino: st.Ino}, nil
}

func (n *netnsRef) close() {
	if n != nil && n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
	}
}

// do runs fn in the namespace: inline when the calling thread is already there, else on a
// fresh thread that enters it and is discarded afterwards (never reused elsewhere).
func (n *netnsRef) do(fn func() error) error {
	runtime.LockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err == nil && st.Dev == n.dev && st.Ino == n.ino {
		defer runtime.UnlockOSThread()
		return fn()
	}
	runtime.UnlockOSThread()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter capture netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
