package main

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []Num
		want float64
	}{
		{"odd", []Num{3, 1, 2}, 2},
		{"even", []Num{4, 1, 3, 2}, 2.5},
		{"skips missing", []Num{NA, 5, NA}, 5},
		{"none", []Num{NA}, math.NaN()},
		{"empty", nil, math.NaN()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := median(tc.in)
			if math.IsNaN(tc.want) {
				if got.OK() {
					t.Fatalf("median = %v, want missing", got)
				}
				return
			}
			if float64(got) != tc.want {
				t.Fatalf("median = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNumJSON(t *testing.T) {
	b, err := json.Marshal(struct{ A, B Num }{1.5, NA})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"A":1.5,"B":null}` {
		t.Fatalf("got %s", b)
	}
	var back struct{ A, B Num }
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.A != 1.5 || back.B.OK() {
		t.Fatalf("round trip: %+v", back)
	}
}

// runsFor makes one repetition of every test for a path.
func runsFor(path string, gbps, p50 float64, cpu [2]Num, conns int, rssRest, rssIdle [2]Num) []Run {
	return []Run{
		{Path: path, Test: TestStream1, Gbps: Num(gbps), Bytes: Num(gbps * 1e9 / 8 * 10), CPU: cpu, Seconds: 10},
		{Path: path, Test: TestStream8, Gbps: Num(gbps), Bytes: Num(gbps * 1e9 / 8 * 10), CPU: cpu, Seconds: 10},
		{Path: path, Test: TestLat200, P50: Num(p50), P99: Num(p50 * 2), QPS: 200, CPU: cpu, Seconds: 10},
		{Path: path, Test: TestLat1000, P50: Num(p50), P99: Num(p50 * 2), QPS: 1000, CPU: cpu, Seconds: 10},
		{Path: path, Test: TestConnRate, Conns: conns, ConnPerSec: Num(conns) / 4, CPU: cpu, Seconds: 4},
		{Path: path, Test: TestIdle, Conns: 1000, RSSRestKiB: rssRest, RSSIdleKiB: rssIdle},
		{Path: path, Test: TestStream1, Error: "failed runs are ignored", Gbps: 1000},
	}
}

func TestSummariseAndTargets(t *testing.T) {
	na := [2]Num{NA, NA}
	var runs []Run
	runs = append(runs, runsFor("direct", 10, 0.1, na, 8000, na, na)...)
	runs = append(runs, runsFor("ghostunnel", 4, 0.4, [2]Num{1, 1}, 2000, [2]Num{1000, 1000}, [2]Num{81000, 81000})...)
	runs = append(runs, runsFor("ambit", 5, 0.45, [2]Num{0.5, 0.75}, 4000, [2]Num{2000, 2000}, [2]Num{32000, 52000})...)
	runs = append(runs, runsFor(PathPolicy, 4.5, 0.45, [2]Num{0.5, 0.75}, 3900, [2]Num{2000, 2000}, [2]Num{32000, 52000})...)
	sums := summarise([]string{"direct", "ghostunnel", "ambit", PathPolicy}, runs, map[string]string{"ghostunnel": "a note"})
	a := sums[2]
	near := func(what string, got Num, want float64) {
		t.Helper()
		if !got.OK() || math.Abs(float64(got)-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	near("ambit vs direct", a.Stream1VsDirect, 0.5)
	near("ambit vs ghostunnel", a.Stream1VsGhost, 1.25)
	// 5 Gbit/s for 10 s is 6.25 GB; 1.25 CPU-s over both ends.
	near("CPU-s/GB both", a.Stream1CPUBoth, 1.25/6.25)
	near("added p50", a.Lat200.AddedP50, 0.35)
	near("cores per 1000 rps, server end", a.Lat1000.CoresPer1000[ServerEnd], 0.075)
	near("conn vs direct", a.ConnVsDirect, 0.5)
	near("CPU-ms per conn both", a.CPUmsConnBoth, 1250.0/4000)
	near("KiB per idle conn, server end", a.KiBPerIdleConn[ServerEnd], 50)
	if sums[1].Note != "a note" {
		t.Errorf("note lost: %+v", sums[1])
	}
	if sums[0].Stream1CPUBoth.OK() {
		t.Errorf("direct has no tunnel ends, got CPU %v", sums[0].Stream1CPUBoth)
	}

	want := map[string]bool{
		"single-stream throughput vs direct":     true,  // 0.5 >= 0.45
		"single-stream throughput vs ghostunnel": true,  // 1.25
		"CPU per GB, both ends (single stream)":  true,  // 0.2
		"added p50 at 200 rps vs ghostunnel's":   true,  // 0.05 ms over ghostunnel
		"cores per ztunnel per 1000 rps":         true,  // 0.075
		"memory per idle connection per end":     false, // 50 KiB on the server end
		"pooled connection rate vs direct":       true,  // 0.5
		// ambit-policy: 3900 conn/s and 4.5 Gbit/s against ambit's 4000 and 5.
		"pooled connection rate, 1,000 policies vs none":   true,  // 0.975
		"single-stream throughput, 1,000 policies vs none": false, // 0.9
	}
	ts := targets(sums)
	if len(ts) != len(want) {
		t.Fatalf("%d targets, want %d", len(ts), len(want))
	}
	for _, tg := range ts {
		w, ok := want[tg.Name]
		if !ok || tg.Met == nil || *tg.Met != w {
			t.Errorf("target %q: value %v met %v, want met=%v", tg.Name, tg.Value, tg.Met, w)
		}
	}
	if targets(sums[:2]) != nil {
		t.Error("targets without an ambit path should be nil")
	}
}

func TestReportOutputs(t *testing.T) {
	na := [2]Num{NA, NA}
	runs := runsFor("direct", 10, 0.1, na, 8000, na, na)
	runs = append(runs, runsFor("ambit", 5, 0.2, [2]Num{1, 1}, 4000, [2]Num{10, 10}, [2]Num{20, 20})...)
	sums := summarise([]string{"direct", "ambit"}, runs, nil)
	r := &Report{Env: Env{Mode: "smoke", GoVersion: "go1.26.8"}, Summary: sums, Targets: targets(sums), Runs: runs}
	var b strings.Builder
	r.WriteTable(&b)
	for _, s := range []string{"Throughput", "Latency", "Connections and memory", "targets (issues 3, 19 and 20)", "MET", "not measured", "2 measurement(s) failed"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
	dir := t.TempDir()
	if err := r.WriteSVG(dir + "/c.svg"); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteJSON(dir + "/r.json"); err != nil {
		t.Fatal(err)
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP istio_tcp_connections_opened_total TCP connections opened.
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="source",x="a}b"} 3
istio_tcp_connections_opened_total{reporter="destination"} 4.5
istio_tcp_connections_opened_totalx 100
istio_tcp_connections_closed_total 7
`
	if got := sumMetric(text, "istio_tcp_connections_opened_total"); got != 7.5 {
		t.Fatalf("sum = %v, want 7.5", got)
	}
	if got := sumMetric("istio_tcp_connections_opened_total 2\n", "istio_tcp_connections_opened_total"); got != 2 {
		t.Fatalf("unlabelled sum = %v, want 2", got)
	}
	if got := sumMetric(text, "istio_tcp_connections_opened_total", `reporter="destination"`); got != 4.5 {
		t.Fatalf("sum of one series = %v, want 4.5", got)
	}
	if got := sumMetric("istio_tcp_connections_opened_total 2\n", "istio_tcp_connections_opened_total", `reporter="source"`); got != 0 {
		t.Fatalf("unlabelled sample counted for a label: %v", got)
	}
}

func TestBusyNeedsSustainedLoad(t *testing.T) {
	// Before the harness sampled the run queue a report had only the 1-minute load.
	byLoad := func(loads ...float64) []Run {
		rs := []Run{{Test: TestIdle, Load1: 50}} // ignored: the idle test makes its own load
		for _, l := range loads {
			rs = append(rs, Run{Test: TestStream1, Load1: l})
		}
		return rs
	}
	// Now what other processes used decides, and a trailing load average does not: it
	// stays high for minutes after the idle test's closing threads have gone.
	byOthers := func(cores ...float64) []Run {
		rs := []Run{{Test: TestIdle, Load1: 50, OtherCores: ptr(Num(2))}}
		for _, c := range cores {
			rs = append(rs, Run{Test: TestConnRate, Load1: 38, OtherCores: ptr(Num(c))})
		}
		return rs
	}
	for _, tc := range []struct {
		name string
		runs []Run
		busy bool
		says string
	}{
		{"quiet", byLoad(1, 2, 3, 2), false, ""},
		{"one spike", byLoad(20, 2, 2, 2, 2), false, "1 of 5 measurements started with the 1-minute load above 4 on 2 CPUs (at most 20.0)"},
		{"a quarter", byLoad(9, 2, 2, 2), false, "1 of 4 measurements started"},
		{"sustained", byLoad(9, 9, 2, 2), true, "2 of 4 measurements started"},
		{"trailing load, no other work", byOthers(0, 0.01, 0, 0.2), false, ""},
		{"other work once", byOthers(0, 0.6, 0, 0.02), false, "1 of 4 measurements shared the 2 CPUs with other processes using more than 0.25 of a CPU (at most 0.60)"},
		{"other work throughout", byOthers(0.3, 1.1, 0, 0.9), true, "3 of 4 measurements shared"},
	} {
		r := &Report{Env: Env{CPUs: 2}, Runs: tc.runs}
		if got := r.busy(); got != tc.busy {
			n, of, _, _ := r.loaded()
			t.Errorf("%s: busy = %v (%d of %d loaded), want %v", tc.name, got, n, of, tc.busy)
		}
		if got := r.competition(); !strings.HasPrefix(got, tc.says) || (tc.says == "") != (got == "") {
			t.Errorf("%s: competition() = %q, want it to start with %q", tc.name, got, tc.says)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestZtunnelProcs(t *testing.T) {
	tests := []struct {
		args []string
		env  string
		want string
	}{
		{nil, "", "auto"},
		{[]string{"-log-level=warn"}, "", "auto"},
		{[]string{"-gomaxprocs=2"}, "", "2"},
		{[]string{"--gomaxprocs", "runtime"}, "", "runtime"},
		{[]string{"-gomaxprocs=1", "-gomaxprocs=auto"}, "", "auto"},
		{nil, "1", "auto, fixed by GOMAXPROCS=1"},
		{[]string{"-gomaxprocs=3"}, "1", "3"},
	}
	for _, tt := range tests {
		if got := ztunnelProcs(tt.args, tt.env); got != tt.want {
			t.Errorf("ztunnelProcs(%q, %q) = %q, want %q", tt.args, tt.env, got, tt.want)
		}
	}
}
