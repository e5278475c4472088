package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// The L7 fault case (issue 21): requests at a fixed rate through the waypoint to a
// service of three endpoints, one of which answers every request 503, with outlier
// detection off (Istio's default: its share of the requests fails) and on (ejected after
// 5 errors), in the same run. See docs/performance.md ("L7 with a failing endpoint").
const (
	TestL7Fault    = "l7-fault"
	l7FaultService = "l7f"
	l7FaultPort    = 8085
	// The two cases, reported as paths of TestL7Fault.
	FaultNoOD = "outlier-detection-off"
	FaultOD   = "outlier-detection-on"
)

// L7FaultSummary is one fault case's medians over repetitions.
type L7FaultSummary struct {
	Case      string `json:"case"`
	Requests  Num    `json:"requests"`
	ErrorRate Num    `json:"error_rate"` // the share of requests not answered 200
	P50       Num    `json:"p50_ms"`
	P99       Num    `json:"p99_ms"`
	Note      string `json:"note,omitempty"`
}

// runL7Fault measures the fault case when the waypoint is among the hops.
func (b *bench) runL7Fault(ctx context.Context, hops []*l7Hop) error {
	f := b.fab.l7
	measured := false
	for _, h := range hops {
		measured = measured || h.name == HopWaypoint
	}
	if !measured || f == nil || f.setFaultRule == nil {
		return nil
	}
	for i, pod := range f.faultPods {
		addr := netip.AddrPortFrom(pod.IP, l7FaultPort)
		args := []string{"server", "-loglevel", "Warning", "-http-port", addr.String(), "-grpc-port", "disabled", "-redirect-port", "disabled",
			"-tcp-port", "disabled", "-udp-port", "disabled"}
		if i == len(f.faultPods)-1 {
			args = append(args, "-echo-server-default-params", "status=503")
		}
		if _, err := b.fab.topo.Start(pod.Command(context.Background(), b.tools.fortio, args...)); err != nil {
			return err
		}
		if err := waitListening(ctx, pod.NS, addr); err != nil {
			b.notes[FaultNoOD], b.notes[FaultOD] = "not measured: "+err.Error(), "not measured: "+err.Error()
			return nil
		}
	}
	d := b.cfg.L7Rate
	for rep := 0; rep < b.cfg.Reps; rep++ {
		// Off first: the waypoint's cluster then drops the ejections of the last run.
		for _, od := range []bool{false, true} {
			name := map[bool]string{false: FaultNoOD, true: FaultOD}[od]
			progress("rep %d/%d %-16s %s", rep+1, b.cfg.Reps, TestL7Fault, name)
			if err := f.setFaultRule(ctx, od); err != nil {
				b.notes[name] = "not measured: " + err.Error()
				progress("%s: %v", name, err)
				continue
			}
			p := &benchPath{name: name, prepare: func(context.Context) error { return nil }}
			b.record(ctx, p, TestL7Fault, rep, func(ctx context.Context, _ *benchPath) Run {
				return b.faultLoad(ctx, name, d)
			})
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	return f.setFaultRule(ctx, false)
}

// faultLoad runs fortio at l7Rate over l7Conns keep-alive connections to l7f for d.
func (b *bench) faultLoad(ctx context.Context, name string, d time.Duration) Run {
	file := filepath.Join(b.dir, fmt.Sprintf("fortio-%s.json", name))
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	url := "http://" + b.fab.l7.faultVIP.String() + l7Path
	cmd := b.fab.l7.client.Command(ctx, b.tools.fortio, "load", "-quiet", "-loglevel", "Error",
		"-qps", fmt.Sprint(l7Rate), "-c", fmt.Sprint(l7Conns), "-t", d.String(), "-allow-initial-errors",
		"-r", "0.00001", "-p", "50,90,99,99.9", "-json", file, url)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	r := Run{Seconds: Num(time.Since(t0).Seconds())}
	raw, rerr := os.ReadFile(file)
	if rerr != nil {
		r.Error = fmt.Sprintf("fortio: %v (%v): %s", rerr, err, firstLines(out))
		return r
	}
	var res fortioResult
	if err := json.Unmarshal(raw, &res); err != nil || res.DurationHistogram.Count == 0 {
		r.Error = fmt.Sprintf("fortio result: %v (%d requests)", err, res.DurationHistogram.Count)
		return r
	}
	n := res.DurationHistogram.Count
	r.QPS, r.Requests = Num(res.ActualQPS), Num(n)
	r.Failed = Num(n - res.RetCodes["200"])
	res.percentiles(&r)
	time.Sleep(settle)
	return r
}
