package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

// RoundTrip sends payload from a pod, half-closes, and returns what came back.
func RoundTrip(ctx context.Context, from *netns.Pod, addr netip.AddrPort, payload []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		return got, fmt.Errorf("write: %w", err)
	}
	return got, rerr
}

// Echo checks that a round trip returns exactly what was sent.
func Echo(ctx context.Context, from *netns.Pod, addr netip.AddrPort) error {
	msg := []byte(fmt.Sprintf("hello from %s to %s", from.Name, addr))
	got, err := RoundTrip(ctx, from, addr, msg)
	if err != nil {
		return fmt.Errorf("%s -> %s: %w", from.Name, addr, err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("%s -> %s: echoed %q, want %q", from.Name, addr, got, msg)
	}
	return nil
}

// EchoOn writes msg on an open connection to an echo server and checks that
// the same bytes come back within 10 seconds.
func EchoOn(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write %q: %w", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read back %q: %w", msg, err)
	}
	if string(buf) != msg {
		return fmt.Errorf("read back %q: got %q", msg, buf)
	}
	return nil
}

// Transfer streams n random bytes from a pod to an echo server at addr and checks that
// what returns hashes the same.
func Transfer(ctx context.Context, from *netns.Pod, addr netip.AddrPort, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.TeeReader(io.LimitReader(rand.Reader, n), sent))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	rn, err := io.Copy(got, c)
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", rn, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rn != n {
		return fmt.Errorf("received %d bytes, sent %d", rn, n)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("checksum mismatch after %d bytes", n)
	}
	return nil
}

// Stream keeps writing on c (and draining what comes back) until a write fails, and
// reports that error: how the connection ended. A write blocked for 20 s is a timeout.
func Stream(c net.Conn) <-chan error {
	ended := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		go func() { _, _ = io.Copy(io.Discard, c) }()
		for {
			_ = c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(buf); err != nil {
				ended <- err
				return
			}
		}
	}()
	return ended
}

// WaitCaptured waits until the node's ztunnel reports ip as captured (or not).
func (m *Mesh) WaitCaptured(ctx context.Context, n *netns.Node, ip netip.Addr, want bool) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var last error
	for {
		d, err := m.Dump(ctx, n)
		if err == nil {
			if _, ok := d.Captured[ip.String()]; ok == want {
				return nil
			}
			last = fmt.Errorf("captured pods: %v", d.Captured)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("capture of %s on %s did not become %v: %v", ip, n.Name, want, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitLog waits up to 5 s for a line of the node's ztunnel output that contains every part.
func (m *Mesh) WaitLog(node string, parts ...string) error {
	if err := WaitOutput(m.Ztunnel(node), parts...); err != nil {
		return fmt.Errorf("ztunnel on %s: %w", node, err)
	}
	return nil
}

// WaitCALog waits up to 5 s for a line of the CA's output that contains every part.
func (m *Mesh) WaitCALog(parts ...string) error {
	if err := WaitOutput(m.ca, parts...); err != nil {
		return fmt.Errorf("ambit-ca: %w", err)
	}
	return nil
}

// WaitOutput waits up to 5 s for a line of p's output that contains every part.
func WaitOutput(p *netns.Proc, parts ...string) error {
	if p == nil {
		return errors.New("no such process")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := p.Output()
		for _, line := range strings.Split(out, "\n") {
			all := true
			for _, part := range parts {
				all = all && strings.Contains(line, part)
			}
			if all {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("logged no line with %q:\n%s", parts, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
