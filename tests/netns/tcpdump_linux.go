package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrStopped is returned by Capture.Stop when the capture was already stopped.
var ErrStopped = errors.New("capture already stopped")

// TcpdumpBufferKiB is tcpdump's capture ring size (-B).
var TcpdumpBufferKiB = 64 << 10

// TcpdumpSnaplen holds a whole 64 KiB GSO/GRO packet with its headers (full capture without
// BIG TCP) while keeping ring frames small enough that bulk transfers are not dropped.
var TcpdumpSnaplen = 65600

// ErrDropped is returned by Capture.Stop when the kernel dropped packets: the file is then
// missing some of the traffic.
var ErrDropped = errors.New("tcpdump: packets dropped by kernel")

// tcpdumpStartTimeout bounds how long Tcpdump waits for "listening on".
const tcpdumpStartTimeout = 30 * time.Second

// Capture is a running tcpdump writing a pcap file.
type Capture struct {
	File string

	proc    *Proc
	mu      sync.Mutex
	stopped bool
}

// Tcpdump starts tcpdump on iface in ns writing the full packets to file (pcap, flushed per
// packet), and returns once tcpdump is listening. filter is a pcap filter expression. The
// capture stops with Stop, when ctx ends, or on Topology.Close.
func (ns *NS) Tcpdump(ctx context.Context, iface, file string, filter ...string) (*Capture, error) {
	// -Z root: with -w tcpdump would otherwise drop to user tcpdump before opening file.
	// --immediate-mode: libpcap otherwise holds packets in ring blocks that SIGINT discards.
	// Immediate mode uses fixed ring frames sized by the snaplen (for "any" and offloading
	// devices), so the ring needs to be large to hold more than a few full-size packets.
	args := []string{"-i", iface, "-n", "--immediate-mode", "-U", "-s", strconv.Itoa(TcpdumpSnaplen), "-B", strconv.Itoa(TcpdumpBufferKiB), "-Z", "root", "-w", file}
	args = append(args, filter...)
	cmd := ns.Command(context.WithoutCancel(ctx), "tcpdump", args...)
	pr, pw := io.Pipe()
	out := &TailBuffer{Max: 64 << 10}
	cmd.Stdout = out
	cmd.Stderr = pw

	var p *Proc
	var err error
	if ns.topo != nil {
		p, err = ns.topo.Start(cmd)
	} else {
		p, err = startProc(cmd)
	}
	if err != nil {
		pw.Close()
		return nil, fmt.Errorf("tcpdump on %s in %s: %w", iface, ns.Name, err)
	}
	p.out = out
	go func() {
		<-p.done
		pw.Close()
	}()
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		seen := false
		for sc.Scan() {
			line := sc.Text()
			out.Write([]byte(line + "\n"))
			if !seen && strings.Contains(line, "listening on") {
				seen = true
				close(listening)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	c := &Capture{File: file, proc: p}
	select {
	case <-listening:
	case <-p.done:
		return nil, fmt.Errorf("tcpdump on %s in %s exited: %v: %s", iface, ns.Name, p.waitErr, strings.TrimSpace(out.String()))
	case <-time.After(tcpdumpStartTimeout):
		_ = p.Kill()
		return nil, fmt.Errorf("tcpdump on %s in %s: not listening after %s: %s", iface, ns.Name, tcpdumpStartTimeout, out.String())
	case <-ctx.Done():
		_ = p.Kill()
		return nil, fmt.Errorf("tcpdump on %s in %s: %w", iface, ns.Name, ctx.Err())
	}
	if ns.topo != nil {
		ns.topo.mu.Lock()
		ns.topo.captures = append(ns.topo.captures, c)
		ns.topo.mu.Unlock()
	}
	go func() {
		select {
		case <-ctx.Done():
			_ = c.Stop()
		case <-p.done:
		}
	}()
	return c, nil
}

func startProc(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{Cmd: cmd, out: &TailBuffer{Max: outputCap}, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Stop interrupts tcpdump (which flushes the file) and waits for it to exit.
func (c *Capture) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return ErrStopped
	}
	c.stopped = true
	c.mu.Unlock()
	c.settle()
	if !c.proc.exited() {
		c.proc.send(unix.SIGINT)
	}
	select {
	case <-c.proc.done:
	case <-time.After(StopTimeout):
		_ = c.proc.Kill()
		return fmt.Errorf("tcpdump writing %s ignored SIGINT: killed", c.File)
	}
	if err := c.proc.result(); err != nil {
		return fmt.Errorf("tcpdump writing %s: %w: %s", c.File, err, c.proc.Output())
	}
	if n := dropped(c.proc.Output()); n > 0 {
		return fmt.Errorf("%w: %d packets missing from %s", ErrDropped, n, c.File)
	}
	return nil
}

// dropped parses tcpdump's "N packets dropped by kernel" summary line.
func dropped(out string) int {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && strings.HasSuffix(line, "packets dropped by kernel") {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 0
}

// settle waits (up to settleMax) until the file has stopped growing for settleQuiet: tcpdump
// may still be writing packets sent just before Stop, and SIGINT drops what it has not read.
func (c *Capture) settle() {
	const (
		poll        = 20 * time.Millisecond
		settleQuiet = 150 * time.Millisecond
		settleMax   = 3 * time.Second
	)
	var last int64 = -1
	quiet := time.Duration(0)
	for waited := time.Duration(0); waited < settleMax && quiet < settleQuiet; waited += poll {
		if c.proc.exited() {
			return
		}
		st, err := os.Stat(c.File)
		size := int64(-1)
		if err == nil {
			size = st.Size()
		}
		if size == last {
			quiet += poll
		} else {
			quiet, last = 0, size
		}
		time.Sleep(poll)
	}
}

// Output is tcpdump's stderr (its packet counts appear there after Stop).
func (c *Capture) Output() string { return c.proc.Output() }
