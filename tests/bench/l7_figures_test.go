package main

import (
	"strings"
	"testing"
)

func TestSummariseL7(t *testing.T) {
	run := func(hop, test string, qps, reqs, cpu, secs, p50, p99 float64) Run {
		return Run{Path: hop, Test: test, QPS: Num(qps), Requests: Num(reqs), CPU: [2]Num{Num(cpu), NA}, Seconds: Num(secs),
			P50: Num(p50), P99: Num(p99), HopRSSKiB: 2048}
	}
	runs := []Run{
		run(HopL4, testL7Max, 20000, 100000, float64(NA), 5, 0, 0),
		run(HopL4, testL7Rate, 1000, 6000, float64(NA), 6, 0.5, 1.0),
		run(HopWaypoint, testL7Max, 10000, 50000, 4, 5, 0, 0),
		run(HopWaypoint, testL7Rate, 1000, 6000, 0.6, 6, 1.5, 4.0),
		run(HopGoProxy, testL7Max, 8000, 40000, 5, 5, 0, 0),
		{Path: HopGoProxy, Test: testL7Max, Error: "failed runs are ignored"},
	}
	sums := summariseL7([]string{HopL4, HopWaypoint, HopGoProxy}, runs, map[string]string{})
	wp, gp := sums[1], sums[2]
	for _, c := range []struct {
		name      string
		got, want Num
	}{
		{"waypoint rps/core", wp.RPSPerCore, 12500},
		{"go rps/core", gp.RPSPerCore, 8000},
		{"waypoint vs go", wp.VsGoProxy, 1.5625},
		{"waypoint hop cores", wp.HopCores, 0.8},
		{"added p50", wp.AddedP50, 1.0},
		{"added p99", wp.AddedP99, 3.0},
		{"cores per 1000 rps", wp.CoresPer1000, 0.1},
		{"rss MiB", wp.RSSMiB, 2},
	} {
		if d := float64(c.got - c.want); d > 1e-9 || d < -1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if sums[0].RPSPerCore.OK() || sums[0].VsGoProxy.OK() {
		t.Errorf("l4-only has no hop: rps/core %v, vs go %v", sums[0].RPSPerCore, sums[0].VsGoProxy)
	}
	ts := l7Targets(sums)
	if len(ts) != 2 || ts[0].Met == nil || !*ts[0].Met || ts[1].Met == nil || !*ts[1].Met {
		t.Fatalf("targets: %+v", ts)
	}
	r := &Report{L7: sums, Targets: ts}
	var b strings.Builder
	r.WriteTable(&b)
	for _, s := range []string{"L7 (HTTP/1.1", "ambit-waypoint", "1.56x", "12500"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
}
