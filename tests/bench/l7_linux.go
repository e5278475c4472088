package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/ambitmesh/ambit/tests/netns"
)

// The L7 case (issue 20): HTTP/1.1 keep-alive requests of 1 KB, echoed by a fortio
// server, from the enrolled client pod on node1 to a server pod on node2 through an L7
// hop in a pod on node3. See docs/performance.md ("L7").
const (
	TestL7 = "l7"
	// The two measurements of every hop.
	testL7Max  = "l7-max-rate"
	testL7Rate = "l7-1000rps"

	l7BackendPort = 8080 // fortio's HTTP server in the server pods
	l7Conns       = 4    // keep-alive connections of the load
	l7Rate        = 1000 // requests per second of the latency measurement
	l7Path        = "/echo"
)

// Hops of the L7 case, in the order they are reported.
const (
	HopL4       = "l4-only"
	HopWaypoint = "ambit-waypoint"
	HopNginx    = "nginx"
	HopHAProxy  = "haproxy"
	HopGoProxy  = "go-reverseproxy"
)

var allHops = []string{HopL4, HopWaypoint, HopNginx, HopHAProxy, HopGoProxy}

// hopPorts: where the baseline hops listen in their pod (all run at once, side by side).
var hopPorts = map[string]uint16{HopNginx: 8090, HopHAProxy: 8091, HopGoProxy: 8092}

// l7Fabric is what the L7 case needs of the mesh.
type l7Fabric struct {
	client    *netns.Pod // enrolled, node1
	server    *netns.Pod // enrolled, node2: the backend of l4-only and the baseline hops
	wpBackend *netns.Pod // enrolled, node2, behind the waypoint: the waypoint's backend
	wpPod     *netns.Pod // node3, the waypoint's pod (not captured)
	hopPod    *netns.Pod // node3, outside the mesh: nginx, haproxy, go-reverseproxy
	vip       netip.AddrPort
	// startWaypoint runs the waypoint with extra arguments and waits until it is ready.
	startWaypoint func(ctx context.Context, extra []string) (int, error)
	// waypointRequests is the waypoint's count of requests answered 200.
	waypointRequests func(ctx context.Context) (float64, error)
	profileWaypoint  func(ctx context.Context, d time.Duration, file string) error
	// The fault case: the endpoints of service l7f (the last one answers 503), and a
	// hook that turns its outlier detection on or off.
	faultPods    []*netns.Pod
	faultVIP     netip.AddrPort
	setFaultRule func(ctx context.Context, od bool) error
}

// l7Hop is one way of the L7 case from the client pod to a backend.
type l7Hop struct {
	name     string
	url      string // what the load asks for
	pids     []int  // the hop's processes; none for l4-only
	children bool   // their children count too (nginx's worker)
}

// setupL7 starts the backends and every hop, and checks a request through each.
func (b *bench) setupL7(ctx context.Context) []*l7Hop {
	fail := func(err error) []*l7Hop {
		for _, h := range b.cfg.Hops {
			b.notes[h] = "not measured: " + err.Error()
		}
		progress("l7: %v", err)
		return nil
	}
	f := b.fab.l7
	if f == nil {
		err := errors.New("the L7 case needs the mesh")
		if b.fab.ambitErr != nil {
			err = b.fab.ambitErr
		}
		return fail(err)
	}
	if b.fab.meshState != nil {
		if err := b.fab.meshState(ctx, false); err != nil {
			return fail(err)
		}
	}
	for _, pod := range []*netns.Pod{f.server, f.wpBackend} {
		addr := netip.AddrPortFrom(pod.IP, l7BackendPort)
		if _, err := b.fab.topo.Start(pod.Command(context.Background(), b.tools.fortio, "server", "-loglevel", "Warning",
			"-http-port", addr.String(), "-grpc-port", "disabled", "-redirect-port", "disabled")); err != nil {
			return fail(err)
		}
		if err := waitListening(ctx, pod.NS, addr); err != nil {
			return fail(fmt.Errorf("fortio server in %s: %w", pod.Name, err))
		}
	}
	var hops []*l7Hop
	for _, name := range b.cfg.Hops {
		h, err := b.startHop(ctx, f, name)
		if err == nil {
			err = l7Check(ctx, f.client, h.url)
		}
		if err == nil && name == HopWaypoint {
			err = b.checkThroughWaypoint(ctx, f, h)
		}
		if err != nil {
			b.notes[name] = "not measured: " + err.Error()
			progress("%s: %v", name, err)
			continue
		}
		hops = append(hops, h)
	}
	return hops
}

// startHop starts hop name in its pod.
func (b *bench) startHop(ctx context.Context, f *l7Fabric, name string) (*l7Hop, error) {
	backend := netip.AddrPortFrom(f.server.IP, l7BackendPort)
	h := &l7Hop{name: name}
	var args []string
	switch name {
	case HopL4:
		h.url = "http://" + backend.String() + l7Path
		return h, nil
	case HopWaypoint:
		pid, err := f.startWaypoint(ctx, b.cfg.WaypointArgs)
		if err != nil {
			return nil, err
		}
		h.pids, h.url = []int{pid}, "http://"+f.vip.String()+l7Path
		return h, nil
	case HopNginx:
		dir := filepath.Join(b.dir, "nginx")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConf(dir, netip.AddrPortFrom(f.hopPod.IP, hopPorts[name]), backend)), 0o644); err != nil {
			return nil, err
		}
		args = []string{b.tools.nginx, "-e", "stderr", "-p", dir, "-c", conf}
		h.children = true // the master and its one worker
	case HopHAProxy:
		conf := filepath.Join(b.dir, "haproxy.cfg")
		if err := os.WriteFile(conf, []byte(haproxyConf(netip.AddrPortFrom(f.hopPod.IP, hopPorts[name]), backend)), 0o644); err != nil {
			return nil, err
		}
		args = []string{b.tools.haproxy, "-db", "-f", conf}
	case HopGoProxy:
		args = []string{b.tools.goReverseProxy, "-listen", netip.AddrPortFrom(f.hopPod.IP, hopPorts[name]).String(), "-target", backend.String()}
	default:
		return nil, fmt.Errorf("unknown hop %q", name)
	}
	listen := netip.AddrPortFrom(f.hopPod.IP, hopPorts[name])
	proc, err := b.fab.topo.Start(f.hopPod.Command(context.Background(), args[0], args[1:]...))
	if err != nil {
		return nil, err
	}
	if err := waitListening(ctx, f.hopPod.NS, listen); err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", name, err, proc.Output())
	}
	h.pids, h.url = []int{proc.Pid()}, "http://"+listen.String()+l7Path
	return h, nil
}

// nginxConf: one worker, keep-alive to the backend, no access log (as the L4 peers log
// no connections); the waypoint runs as shipped.
func nginxConf(dir string, listen, backend netip.AddrPort) string {
	return fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    upstream backend {
        server %[3]s;
        keepalive 64;
    }
    server {
        listen %[2]s;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }
    }
}
`, dir, listen, backend)
}

// haproxyConf: one thread, keep-alive both ways, connections to the backend reused.
func haproxyConf(listen, backend netip.AddrPort) string {
	return fmt.Sprintf(`global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout http-keep-alive 1h
frontend l7
    bind %s
    default_backend backend
backend backend
    http-reuse always
    server s1 %s
`, listen, backend)
}

// l7Check posts a payload through url from client and checks it comes back.
func l7Check(ctx context.Context, client *netns.Pod, url string) error {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: client.DialContext, DisableKeepAlives: true}}
	msg := bytes.Repeat([]byte("ambit-bench."), payloadBytes/12)
	var lastErr error
	for i := 0; i < 50 && ctx.Err() == nil; i++ {
		lastErr = func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(msg))
			if err != nil {
				return err
			}
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK || !bytes.Equal(got, msg) {
				return fmt.Errorf("%s: %s, %d bytes back", url, resp.Status, len(got))
			}
			return nil
		}()
		if lastErr == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("request through %s: %w", url, lastErr)
}

// checkThroughWaypoint: the check's request went through the waypoint (its counter grew).
func (b *bench) checkThroughWaypoint(ctx context.Context, f *l7Fabric, h *l7Hop) error {
	before, err := f.waypointRequests(ctx)
	if err != nil {
		return fmt.Errorf("waypoint metrics: %w", err)
	}
	if err := l7Check(ctx, f.client, h.url); err != nil {
		return err
	}
	after, err := f.waypointRequests(ctx)
	if err != nil {
		return fmt.Errorf("waypoint metrics: %w", err)
	}
	if after <= before {
		return errors.New("the request did not go through the waypoint (istio_requests_total did not grow)")
	}
	return nil
}

// runL7 measures every hop: its throughput at the highest rate the load reaches and,
// at a fixed rate, its latency; interleaved as the L4 tests are.
func (b *bench) runL7(ctx context.Context) error {
	progress("l7: starting the backends and the hops")
	hops := b.setupL7(ctx)
	if len(hops) == 0 {
		return nil
	}
	prepare := func(ctx context.Context) error { return nil }
	if b.fab.meshState != nil {
		prepare = func(ctx context.Context) error { return b.fab.meshState(ctx, false) }
	}
	tests := []struct {
		name string
		qps  int
		d    time.Duration
	}{{testL7Max, 0, b.cfg.L7Max}, {testL7Rate, l7Rate, b.cfg.L7Rate}}
	for rep := 0; rep < b.cfg.Reps; rep++ {
		for _, t := range tests {
			for _, i := range runOrder(len(hops), rep) {
				h := hops[i]
				progress("rep %d/%d %-16s %s", rep+1, b.cfg.Reps, t.name, h.name)
				p := &benchPath{name: h.name, prepare: prepare}
				b.record(ctx, p, t.name, rep, func(ctx context.Context, _ *benchPath) Run {
					return b.l7Load(ctx, h, t.name, rep, t.qps, t.d)
				})
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
		}
	}
	return b.runL7Fault(ctx, hops)
}

// hopCPU is the CPU seconds of the hop's processes (NA for none).
func (h *l7Hop) cpu() Num {
	if len(h.pids) == 0 {
		return NA
	}
	var total float64
	for _, pid := range h.pids {
		s, err := cpuSeconds(pid, h.children)
		if err != nil {
			return NA
		}
		total += s
	}
	return Num(total)
}

// rss is the resident memory of the hop's processes, children included (KiB).
func (h *l7Hop) rss() Num {
	if len(h.pids) == 0 {
		return NA
	}
	var total float64
	for _, pid := range h.pids {
		pids := []int{pid}
		if h.children {
			pids = append(pids, childPIDs(pid)...)
		}
		for _, p := range pids {
			v, err := rssKiB(p)
			if err != nil {
				return NA
			}
			total += v
		}
	}
	return Num(total)
}

// l7Load runs fortio's HTTP/1.1 load (keep-alive, l7Conns connections, POSTs of
// payloadBytes echoed back) through h at qps (0: as fast as it goes) for d.
func (b *bench) l7Load(ctx context.Context, h *l7Hop, test string, rep, qps int, d time.Duration) Run {
	file := filepath.Join(b.dir, fmt.Sprintf("fortio-%s-%s.json", h.name, test))
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := b.fab.l7.client.Command(ctx, b.tools.fortio, "load", "-quiet", "-loglevel", "Error",
		"-qps", fmt.Sprint(qps), "-c", fmt.Sprint(l7Conns), "-t", d.String(), "-payload-size", fmt.Sprint(payloadBytes),
		"-r", "0.00001", "-p", "50,90,99,99.9", "-json", file, h.url)
	var profErr chan error
	if b.cfg.Profile != "" && h.name == HopWaypoint && test == testL7Max && b.fab.l7.profileWaypoint != nil {
		if err := os.MkdirAll(b.cfg.Profile, 0o755); err == nil {
			profErr = make(chan error, 1)
			pf := filepath.Join(b.cfg.Profile, fmt.Sprintf("waypoint-%s-rep%d.pprof", test, rep+1))
			go func() { profErr <- b.fab.l7.profileWaypoint(ctx, d, pf) }()
		}
	}
	before, t0 := h.cpu(), time.Now()
	out, err := cmd.CombinedOutput()
	wall := time.Since(t0)
	r := Run{CPU: [2]Num{sub(h.cpu(), before), NA}, Seconds: Num(wall.Seconds()), HopRSSKiB: h.rss()}
	if profErr != nil {
		if perr := <-profErr; perr != nil {
			progress("  profile: %v", perr)
		}
	}
	time.Sleep(settle)
	return fortioResults(r, out, err, file, "200")
}
