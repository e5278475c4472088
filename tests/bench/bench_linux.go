package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambitmesh/ambit/tests/netns"
)

// Targets in the server pods.
const (
	iperfPort = 5201
	echoPort  = 8078
	// payload of every fortio request, echoed back.
	payloadBytes = 1024
	// nofile is the RLIMIT_NOFILE the harness sets for itself and so for every process it
	// starts (ztunnels, relays, servers): 10,000 idle connections need 2-3 fds each.
	nofile = 1 << 17
)

// tools are the peer programs.
type tools struct {
	iperf3, socat, stunnel, fortio, ghostunnel, istioHBONE, goRelay string
	nginx, haproxy, goReverseProxy                                  string // the L7 case's hops
}

// tunnelEnd is one side of a tunnel: the processes whose CPU counts for it.
type tunnelEnd struct {
	pids     []int
	echoPID  int  // the process carrying the echo target (memory figures)
	children bool // count its children's CPU too (socat forks per connection)
}

// benchPath is one way from the client pod to the servers.
type benchPath struct {
	name   string
	client *netns.Pod
	iperf  netip.AddrPort
	echo   netip.AddrPort
	ends   []tunnelEnd // none (direct) or two: ClientEnd, ServerEnd
	noMem  string      // why idle-connection memory is not measured
	note   string      // what the path measured, for the report
	// prepare, when set, runs before each measurement of the path, outside it.
	prepare func(context.Context) error
}

type bench struct {
	cfg      config
	dir      string
	tools    tools
	certs    certFiles
	fab      *fabric
	paths    []*benchPath
	runs     []Run
	notes    map[string]string
	env      Env
	envNotes []string
	start    time.Time
}

func newBench(c config) (*bench, error) {
	b := &bench{cfg: c, notes: map[string]string{}, start: time.Now()}
	var err error
	if b.tools, err = findTools(c.Tools, c.l4(), contains(c.Tests, TestL7)); err != nil {
		return nil, err
	}
	limit, err := raiseNoFile()
	if err != nil {
		return nil, err
	}
	// A relay end holds two descriptors per connection (accepted and upstream).
	if most := (int(limit) - 1024) / 2; b.cfg.IdleConns > most && contains(c.Tests, TestIdle) {
		b.envNotes = append(b.envNotes, fmt.Sprintf("idle connections capped at %d (asked %d): RLIMIT_NOFILE hard limit is %d and cannot be raised here (no CAP_SYS_RESOURCE); a relay end needs two descriptors per connection", most, b.cfg.IdleConns, limit))
		b.cfg.IdleConns = most
	}
	if b.dir, err = os.MkdirTemp("", "ambit-bench-"); err != nil {
		return nil, err
	}
	return b, nil
}

// Close removes the topology, every process and the temporary files.
func (b *bench) Close() {
	if b.fab != nil {
		if err := b.fab.close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: teardown:", err)
		}
		b.fab = nil
	}
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// findTools finds the peers of the L4 paths and of the L7 case, as asked.
func findTools(dir string, l4, l7 bool) (tools, error) {
	var t tools
	var missing []string
	look := func(dst *string, names ...string) {
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				*dst = p
				return
			}
			if p := filepath.Join("/usr/sbin", n); isExecutable(p) { // nginx, haproxy
				*dst = p
				return
			}
		}
		missing = append(missing, names[0])
	}
	var cached []struct {
		dst  *string
		name string
	}
	if l4 {
		look(&t.iperf3, "iperf3")
		look(&t.socat, "socat")
		look(&t.stunnel, "stunnel4", "stunnel")
		cached = append(cached, []struct {
			dst  *string
			name string
		}{{&t.ghostunnel, "ghostunnel"}, {&t.istioHBONE, "istio-hbone"}, {&t.goRelay, "gorelay"}}...)
	}
	if l7 {
		look(&t.nginx, "nginx")
		look(&t.haproxy, "haproxy")
		cached = append(cached, struct {
			dst  *string
			name string
		}{&t.goReverseProxy, "goreverseproxy"})
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("missing %s: run scripts/install-deps.sh bench (apt-get install iperf3 socat stunnel4 nginx-light haproxy)", strings.Join(missing, ", "))
	}
	cached = append(cached, struct {
		dst  *string
		name string
	}{&t.fortio, "fortio"})
	for _, x := range cached {
		p := filepath.Join(dir, x.name)
		if !isExecutable(p) {
			missing = append(missing, p)
			continue
		}
		*x.dst = p
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("missing %s: run tests/tools/build.sh (or pass -tools)", strings.Join(missing, ", "))
	}
	return t, nil
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// raiseNoFile lifts RLIMIT_NOFILE as far as allowed and returns the new soft limit.
// Setting it explicitly (not Go's automatic raise) makes children inherit it: the pods'
// processes have no limit of their own, only what they inherit from here. Raising the hard
// limit needs CAP_SYS_RESOURCE, which containers often drop.
func raiseNoFile() (uint64, error) {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Max < nofile {
		up := unix.Rlimit{Cur: nofile, Max: nofile}
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &up) == nil {
			return nofile, nil
		}
	}
	l.Cur = l.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", l.Max, err)
	}
	return l.Cur, nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Run sets everything up, measures and returns the report.
func (b *bench) Run(ctx context.Context) (*Report, error) {
	b.env = b.collectEnv()
	if slices.ContainsFunc(b.cfg.Paths, isAmbit) || contains(b.cfg.Tests, TestL7) {
		if contains(b.cfg.Tests, TestL7) {
			progress("starting the mesh: 3 nodes with 3 pods each, the CA and a ztunnel on node1 and node2")
		} else {
			progress("starting the mesh: 2 nodes with 2 pods each, the CA and a ztunnel per node")
		}
	} else {
		progress("building the topology: 2 nodes with 2 pods each")
	}
	var err error
	b.fab, err = startFabric(ctx, b.cfg)
	if err != nil {
		return nil, err
	}
	if b.fab.ambitErr != nil {
		for _, p := range b.cfg.Paths {
			if isAmbit(p) {
				b.notes[p] = "not measured: " + b.fab.ambitErr.Error()
			}
		}
		progress("ambit unavailable, measuring the baselines only: %v", b.fab.ambitErr)
	}
	topo := b.fab.topo
	n1, n2 := topo.Nodes[0], topo.Nodes[1]
	if b.certs, err = writeCerts(b.dir, n2.IP); err != nil {
		return nil, err
	}
	for _, ns := range []*netns.NS{n1.NS, n2.NS, b.fab.plainClient.NS, b.fab.meshClient.NS} {
		// Thousands of short connections per second to one destination: reuse TIME_WAIT
		// ports and keep clear of the relays' listening ports.
		if err := ns.Sysctl("net.ipv4.tcp_tw_reuse", "1"); err != nil {
			return nil, err
		}
		if err := ns.Sysctl("net.ipv4.ip_local_port_range", "30000 65000"); err != nil {
			return nil, err
		}
	}
	var l4Paths []string
	if b.cfg.l4() {
		if err := b.startServers(ctx); err != nil {
			return nil, err
		}
		l4Paths = b.cfg.Paths
	}
	for _, name := range l4Paths {
		p, err := b.setupPath(ctx, name)
		if err != nil {
			if !isAmbit(name) || b.fab.ambitErr == nil {
				b.notes[name] = "not measured: " + err.Error()
			}
			progress("%s: %v", name, err)
			continue
		}
		if p.note != "" {
			b.notes[name] = p.note
		}
		b.paths = append(b.paths, p)
	}
	if len(b.paths) == 0 && len(l4Paths) > 0 {
		return nil, errors.New("no path could be set up")
	}

	if contains(b.cfg.Tests, TestIdle) {
		progress("memory: %d idle connections per path", b.cfg.IdleConns)
	}
	for _, p := range b.paths {
		if len(p.ends) == 0 || !contains(b.cfg.Tests, TestIdle) {
			continue
		}
		if p.noMem != "" {
			b.notes[p.name] = p.noMem
			continue
		}
		b.record(ctx, p, TestIdle, 0, b.idle)
	}
	tests := []struct {
		name string
		fn   func(context.Context, *benchPath) Run
	}{
		{TestStream1, func(ctx context.Context, p *benchPath) Run { return b.iperf(ctx, p, 1) }},
		{TestStream8, func(ctx context.Context, p *benchPath) Run { return b.iperf(ctx, p, 8) }},
		{TestLat200, func(ctx context.Context, p *benchPath) Run { return b.fortio(ctx, p, 200, 1, b.cfg.Lat200) }},
		{TestLat1000, func(ctx context.Context, p *benchPath) Run { return b.fortio(ctx, p, 1000, 4, b.cfg.Lat1000) }},
		{TestConnRate, b.connRate},
	}
	for rep := 0; rep < b.cfg.Reps; rep++ {
		for _, t := range tests {
			if !contains(b.cfg.Tests, t.name) {
				continue
			}
			// Interleaved: every path runs each test before the next test, in an order
			// that changes per repetition (runOrder).
			for _, i := range runOrder(len(b.paths), rep) {
				p := b.paths[i]
				progress("rep %d/%d %-16s %s", rep+1, b.cfg.Reps, t.name, p.name)
				b.record(ctx, p, t.name, rep, b.profiled(p, t.name, rep, t.fn))
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
			}
		}
	}
	var l7 []L7Summary
	var faults []L7FaultSummary
	if contains(b.cfg.Tests, TestL7) {
		if err := b.runL7(ctx); err != nil {
			return nil, err
		}
		l7 = summariseL7(b.cfg.Hops, b.runs, b.notes)
		faults = summariseL7Fault(b.runs, b.notes)
	}
	b.env.LoadEnd = loadavg()
	b.env.LoadMax = max(b.env.LoadStart[0], b.env.LoadEnd[0])
	for _, r := range b.runs {
		b.env.LoadMax = max(b.env.LoadMax, r.Load1)
	}
	b.env.Seconds = time.Since(b.start).Seconds()
	sums := summarise(l4Paths, b.runs, b.notes)
	return &Report{Env: b.env, Summary: sums, L7: l7, L7Fault: faults, Targets: append(targets(sums), l7Targets(l7)...), Runs: b.runs}, nil
}

// runOrder is the order in which repetition rep runs n paths: starting at path rep, so
// each path runs early in some repetitions and late in others, and backwards in odd ones,
// so each path follows different ones (a rotation alone keeps every path's predecessor,
// which could leave sockets or load behind for it every time).
func runOrder(n, rep int) []int {
	order := make([]int, n)
	for i := range order {
		if rep%2 == 0 {
			order[i] = (rep + i) % n
		} else {
			order[i] = ((rep-i)%n + n) % n
		}
	}
	return order
}

// profiled wraps fn so that, with -profile, CPU profiles of both ztunnels are taken while
// Ambit runs the single-stream and connection-rate tests.
func (b *bench) profiled(p *benchPath, test string, rep int, fn func(context.Context, *benchPath) Run) func(context.Context, *benchPath) Run {
	var d time.Duration
	switch test {
	case TestStream1:
		d = b.cfg.Stream
	case TestConnRate:
		d = b.cfg.Conn
	}
	if b.cfg.Profile == "" || !isAmbit(p.name) || d == 0 || b.fab.profile == nil {
		return fn
	}
	return func(ctx context.Context, p *benchPath) Run {
		if err := os.MkdirAll(b.cfg.Profile, 0o755); err != nil {
			progress("  profile: %v", err)
			return fn(ctx, p)
		}
		nodes := b.fab.topo.Nodes[:2]
		ext := ".pprof"
		if os.Getenv("AMBIT_BENCH_TRACE") != "" {
			ext = ".trace" // an execution trace instead of a CPU profile
		}
		errc := make(chan error, len(nodes))
		for _, n := range nodes {
			name := fmt.Sprintf("ztunnel-%s-%s-rep%d%s", n.Name, test, rep+1, ext)
			if p.name != "ambit" {
				name = p.name + "-" + name
			}
			file := filepath.Join(b.cfg.Profile, name)
			go func() { errc <- b.fab.profile(ctx, n, d, file) }()
		}
		r := fn(ctx, p)
		for range nodes {
			if err := <-errc; err != nil {
				progress("  profile: %v", err)
			}
		}
		return r
	}
}

// record runs one measurement and keeps it, with the load average at its start.
func (b *bench) record(ctx context.Context, p *benchPath, test string, rep int, fn func(context.Context, *benchPath) Run) {
	if p.prepare != nil {
		if err := p.prepare(ctx); err != nil {
			progress("  %s %s: %v", p.name, test, err)
			b.runs = append(b.runs, Run{Path: p.name, Test: test, Rep: rep, Error: "prepare the path: " + err.Error()})
			return
		}
	}
	load := loadavg()[0]
	others, t0 := otherCPU(), time.Now()
	r := fn(ctx, p)
	oc := otherCores(others, otherCPU(), time.Since(t0))
	r.OtherCores = &oc
	r.Path, r.Test, r.Rep, r.Load1 = p.name, test, rep, load
	if r.Error != "" {
		progress("  %s %s: %s", p.name, test, r.Error)
	}
	b.runs = append(b.runs, r)
	// Let sockets, relays and the run queue settle before the next measurement.
	time.Sleep(300 * time.Millisecond)
}

func (r *Report) failures() int {
	n := 0
	for _, run := range r.Runs {
		if run.Error != "" {
			n++
		}
	}
	for _, s := range r.Summary {
		if strings.HasPrefix(s.Note, "not measured") {
			n++
		}
	}
	return n
}

func (b *bench) collectEnv() Env {
	e := Env{
		Mode: "full", Started: b.start.UTC().Format(time.RFC3339), GoVersion: runtime.Version(),
		GOMAXPROCS: runtime.GOMAXPROCS(0), ZtunnelProcs: ztunnelProcs(b.cfg.ZtunnelArgs, os.Getenv("GOMAXPROCS")), CPUs: runtime.NumCPU(), LoadStart: loadavg(),
		Repetitions: b.cfg.Reps, Peers: map[string]string{},
		Config: Durations{
			StreamSeconds: b.cfg.Stream.Seconds(), Lat200Seconds: b.cfg.Lat200.Seconds(), Lat1000Seconds: b.cfg.Lat1000.Seconds(),
			ConnSeconds: b.cfg.Conn.Seconds(), IdleConnections: b.cfg.IdleConns, PayloadBytes: payloadBytes,
			L7MaxSeconds: b.cfg.L7Max.Seconds(), L7RateSeconds: b.cfg.L7Rate.Seconds(),
		},
	}
	if b.cfg.Smoke {
		e.Mode = "smoke"
	}
	e.Notes = b.envNotes
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var l unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &l) == nil {
		e.NoFile = l.Cur
	}
	firstLine := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "Initializing") {
				return line
			}
		}
		return "unknown"
	}
	if b.tools.nginx != "" {
		e.Peers["nginx"] = firstLine(b.tools.nginx, "-v")
		e.Peers["haproxy"] = firstLine(b.tools.haproxy, "-v")
		e.Peers["go-reverseproxy"] = moduleVersion(b.tools.goReverseProxy, "")
		if len(b.cfg.WaypointArgs) > 0 {
			e.Notes = append(e.Notes, "waypoint arguments: "+strings.Join(b.cfg.WaypointArgs, " "))
		}
	}
	if b.tools.iperf3 == "" {
		e.Peers["fortio"] = moduleVersion(b.tools.fortio, "fortio.org/fortio")
		return e
	}
	e.Peers["iperf3"] = firstLine(b.tools.iperf3, "--version")
	e.Peers["socat"] = firstLine(b.tools.socat, "-V")
	if out, _ := exec.Command(b.tools.socat, "-V").CombinedOutput(); len(out) > 0 {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "socat version") {
				e.Peers["socat"] = strings.TrimSpace(line)
			}
		}
	}
	e.Peers["stunnel"] = firstLine(b.tools.stunnel, "-version")
	for name, p := range map[string]struct{ bin, mod string }{
		"fortio":      {b.tools.fortio, "fortio.org/fortio"},
		"ghostunnel":  {b.tools.ghostunnel, "github.com/ghostunnel/ghostunnel"},
		"istio-hbone": {b.tools.istioHBONE, "istio.io/istio"},
		"go-relay":    {b.tools.goRelay, "github.com/ambitmesh/ambit/tests/tools/gorelay"},
	} {
		e.Peers[name] = moduleVersion(p.bin, p.mod)
	}
	return e
}

// moduleVersion reads the version of module mod that the Go binary bin was built with.
func moduleVersion(bin, mod string) string {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path == mod {
			return mod + " " + d.Version + " (" + bi.GoVersion + ")"
		}
	}
	return bi.Main.Path + " " + bi.Main.Version + " (" + bi.GoVersion + ")"
}

// startServers runs iperf3 and fortio's TCP echo in both server pods.
func (b *bench) startServers(ctx context.Context) error {
	for _, pod := range []*netns.Pod{b.fab.plainServer, b.fab.meshServer} {
		if pod == nil {
			continue
		}
		cmds := [][]string{
			{b.tools.iperf3, "-s", "-p", fmt.Sprint(iperfPort)},
			{b.tools.fortio, "tcp-echo", "-loglevel", "Warning", "-tcp-port", fmt.Sprintf("%s:%d", pod.IP, echoPort)},
		}
		for _, c := range cmds {
			if _, err := b.fab.topo.Start(pod.Command(context.Background(), c[0], c[1:]...)); err != nil {
				return err
			}
		}
		for _, port := range []uint16{iperfPort, echoPort} {
			if err := waitListening(ctx, pod.NS, netip.AddrPortFrom(pod.IP, port)); err != nil {
				return fmt.Errorf("server in %s: %w", pod.Name, err)
			}
		}
	}
	return nil
}

// waitListening dials addr from ns until it accepts.
func waitListening(ctx context.Context, ns *netns.NS, addr netip.AddrPort) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := dialFrom(ctx, ns, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not listening: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dialFrom(ctx context.Context, ns *netns.NS, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return ns.DialContext(ctx, "tcp", addr.String())
}

// echoCheck sends a payload through the path's echo target and checks it comes back.
func echoCheck(ctx context.Context, p *benchPath) error {
	var lastErr error
	for i := 0; i < 50; i++ {
		lastErr = func() error {
			c, err := dialFrom(ctx, p.client.NS, p.echo, 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			msg := bytes.Repeat([]byte("ambit-bench."), payloadBytes/12)
			if _, err := c.Write(msg); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				return fmt.Errorf("read echo: %w", err)
			}
			if !bytes.Equal(got, msg) {
				return errors.New("echo came back altered")
			}
			return nil
		}()
		if lastErr == nil || ctx.Err() != nil {
			return lastErr
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("echo through %s: %w", p.echo, lastErr)
}

// cpu reads the CPU seconds of each end of p.
func (p *benchPath) cpu() [2]Num {
	out := [2]Num{NA, NA}
	for e, end := range p.ends {
		var total float64
		for _, pid := range end.pids {
			s, err := cpuSeconds(pid, end.children)
			if err != nil {
				total = -1
				break
			}
			total += s
		}
		if total >= 0 {
			out[e] = Num(total)
		}
	}
	return out
}

func cpuDelta(before, after [2]Num) [2]Num {
	return [2]Num{sub(after[0], before[0]), sub(after[1], before[1])}
}
