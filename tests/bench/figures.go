package main

import (
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Num is a figure that may be missing (NaN): it prints as "-" and encodes as JSON null.
type Num float64

// NA is a missing figure.
var NA = Num(math.NaN())

func (n Num) OK() bool { return !math.IsNaN(float64(n)) && !math.IsInf(float64(n), 0) }

func (n Num) MarshalJSON() ([]byte, error) {
	if !n.OK() {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, float64(n), 'g', 6, 64), nil
}

func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = NA
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*n = Num(f)
	return nil
}

// div is a/b, NA when either is missing or b is zero.
func div(a, b Num) Num {
	if !a.OK() || !b.OK() || b == 0 {
		return NA
	}
	return a / b
}

func sub(a, b Num) Num {
	if !a.OK() || !b.OK() {
		return NA
	}
	return a - b
}

func add(a, b Num) Num {
	if !a.OK() || !b.OK() {
		return NA
	}
	return a + b
}

// median of the present values; NA when none is.
func median(xs []Num) Num {
	var v []float64
	for _, x := range xs {
		if x.OK() {
			v = append(v, float64(x))
		}
	}
	if len(v) == 0 {
		return NA
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return Num(v[len(v)/2])
	}
	return Num((v[len(v)/2-1] + v[len(v)/2]) / 2)
}

// Test names, in the order each repetition runs them.
const (
	TestStream1  = "iperf3-1-stream"
	TestStream8  = "iperf3-8-streams"
	TestLat200   = "fortio-200rps"
	TestLat1000  = "fortio-1000rps"
	TestConnRate = "connection-rate"
	TestIdle     = "idle-connections"
)

// PathPolicy is the ambit path with issue 19's policy case in force: 10,000 workloads in
// the model and 1,000 AuthorizationPolicies, 100 of them applying to the destination
// (tests/scale). The harness switches the mesh between the two before each measurement,
// so both are measured in the same run.
const PathPolicy = "ambit-policy"

// isAmbit reports whether path runs through the mesh.
func isAmbit(path string) bool { return path == "ambit" || path == PathPolicy }

// Ends of a tunnel: the client side (node1) and the server side (node2).
const (
	ClientEnd = 0
	ServerEnd = 1
)

// Run is one measurement of one path. CPU is in seconds per tunnel end; memory in KiB.
type Run struct {
	Path  string  `json:"path"`
	Test  string  `json:"test"`
	Rep   int     `json:"rep"`
	Load1 float64 `json:"loadavg1"`
	// CPUs kept busy during the measurement by processes that are not the benchmark's
	// (otherCPU): the competition it met. Nil in reports made before it was measured.
	OtherCores *Num   `json:"other_cores,omitempty"`
	Seconds    Num    `json:"seconds"`
	Error      string `json:"error,omitempty"`

	Bytes      Num `json:"bytes,omitempty"`
	Gbps       Num `json:"gbit_per_s,omitempty"`
	MachineCPU Num `json:"machine_cpu_s,omitempty"` // all CPUs busy, whole machine (iperf3 runs)

	QPS  Num `json:"qps,omitempty"`
	P50  Num `json:"p50_ms,omitempty"`
	P90  Num `json:"p90_ms,omitempty"`
	P99  Num `json:"p99_ms,omitempty"`
	P999 Num `json:"p99_9_ms,omitempty"`

	Conns      int `json:"conns,omitempty"`
	ConnErrors int `json:"conn_errors,omitempty"`
	ConnPerSec Num `json:"conn_per_s,omitempty"`

	CPU [2]Num `json:"cpu_s"` // the L7 case: the hop's, then NA

	Requests  Num `json:"requests,omitempty"`    // the L7 case: requests answered
	Failed    Num `json:"failed,omitempty"`      // the L7 fault case: requests not answered 200
	HopRSSKiB Num `json:"hop_rss_kib,omitempty"` // the L7 case: the hop's resident memory after the run

	RSSRestKiB [2]Num `json:"rss_rest_kib"`
	RSSIdleKiB [2]Num `json:"rss_idle_kib"`
}

// Latency is a fortio result reduced over repetitions (milliseconds).
type Latency struct {
	P50, P90, P99, P999 Num
	AddedP50, AddedP99  Num // over direct
	QPS                 Num
	CoresPer1000        [2]Num // per tunnel end, per 1000 rps
}

// Summary is one path's figures: medians over repetitions, ratios from those medians.
type Summary struct {
	Path string `json:"path"`

	Stream1Gbps     Num    `json:"stream1_gbit_per_s"`
	Stream1VsDirect Num    `json:"stream1_vs_direct"`
	Stream1VsGhost  Num    `json:"stream1_vs_ghostunnel"`
	Stream1CPUPerGB [2]Num `json:"stream1_cpu_s_per_gb"`
	Stream1CPUBoth  Num    `json:"stream1_cpu_s_per_gb_both"`
	Stream1Machine  Num    `json:"stream1_machine_cpu_s_per_gb"` // every process and the kernel

	Stream8Gbps     Num    `json:"stream8_gbit_per_s"`
	Stream8VsDirect Num    `json:"stream8_vs_direct"`
	Stream8VsGhost  Num    `json:"stream8_vs_ghostunnel"`
	Stream8CPUPerGB [2]Num `json:"stream8_cpu_s_per_gb"`
	Stream8CPUBoth  Num    `json:"stream8_cpu_s_per_gb_both"`

	Lat200  Latency `json:"latency_200rps"`
	Lat1000 Latency `json:"latency_1000rps"`

	ConnPerSec    Num    `json:"conn_per_s"`
	ConnVsDirect  Num    `json:"conn_vs_direct"`
	CPUmsPerConn  [2]Num `json:"cpu_ms_per_conn"`
	CPUmsConnBoth Num    `json:"cpu_ms_per_conn_both"`

	RSSRestMiB     [2]Num `json:"rss_rest_mib"`
	KiBPerIdleConn [2]Num `json:"kib_per_idle_conn"`
	IdleConns      int    `json:"idle_conns"`
	Note           string `json:"note,omitempty"`
}

// summarise reduces the runs of every path (in order) to medians and ratios.
func summarise(paths []string, runs []Run, notes map[string]string) []Summary {
	byPath := map[string]*Summary{}
	var out []Summary
	for _, p := range paths {
		s := reduce(p, runs)
		s.Note = notes[p]
		out = append(out, s)
	}
	for i := range out {
		byPath[out[i].Path] = &out[i]
	}
	direct, ghost := byPath["direct"], byPath["ghostunnel"]
	for i := range out {
		s := &out[i]
		if direct != nil {
			s.Stream1VsDirect = div(s.Stream1Gbps, direct.Stream1Gbps)
			s.Stream8VsDirect = div(s.Stream8Gbps, direct.Stream8Gbps)
			s.ConnVsDirect = div(s.ConnPerSec, direct.ConnPerSec)
			s.Lat200.AddedP50 = sub(s.Lat200.P50, direct.Lat200.P50)
			s.Lat200.AddedP99 = sub(s.Lat200.P99, direct.Lat200.P99)
			s.Lat1000.AddedP50 = sub(s.Lat1000.P50, direct.Lat1000.P50)
			s.Lat1000.AddedP99 = sub(s.Lat1000.P99, direct.Lat1000.P99)
		}
		if ghost != nil {
			s.Stream1VsGhost = div(s.Stream1Gbps, ghost.Stream1Gbps)
			s.Stream8VsGhost = div(s.Stream8Gbps, ghost.Stream8Gbps)
		}
	}
	return out
}

// okRuns are the runs of path and test that succeeded.
func okRuns(runs []Run, path, test string) []Run {
	var rs []Run
	for _, r := range runs {
		if r.Path == path && r.Test == test && r.Error == "" {
			rs = append(rs, r)
		}
	}
	return rs
}

// med is the median of f over rs.
func med(rs []Run, f func(Run) Num) Num {
	xs := make([]Num, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return median(xs)
}

func reduce(path string, runs []Run) Summary {
	s := Summary{Path: path}
	pick := func(test string) []Run { return okRuns(runs, path, test) }
	// Per-run ratios first, then the median: CPU and volume of one run belong together.
	perGB := func(rs []Run, end int) Num {
		return med(rs, func(r Run) Num { return div(r.CPU[end], r.Bytes/1e9) })
	}
	bothPerGB := func(rs []Run) Num {
		return med(rs, func(r Run) Num { return div(add(r.CPU[0], r.CPU[1]), r.Bytes/1e9) })
	}
	s1, s8 := pick(TestStream1), pick(TestStream8)
	s.Stream1Gbps = med(s1, func(r Run) Num { return r.Gbps })
	s.Stream8Gbps = med(s8, func(r Run) Num { return r.Gbps })
	for e := 0; e < 2; e++ {
		s.Stream1CPUPerGB[e] = perGB(s1, e)
		s.Stream8CPUPerGB[e] = perGB(s8, e)
	}
	s.Stream1CPUBoth, s.Stream8CPUBoth = bothPerGB(s1), bothPerGB(s8)
	s.Stream1Machine = med(s1, func(r Run) Num { return div(r.MachineCPU, r.Bytes/1e9) })

	lat := func(rs []Run) Latency {
		l := Latency{
			P50: med(rs, func(r Run) Num { return r.P50 }), P90: med(rs, func(r Run) Num { return r.P90 }),
			P99: med(rs, func(r Run) Num { return r.P99 }), P999: med(rs, func(r Run) Num { return r.P999 }),
			QPS: med(rs, func(r Run) Num { return r.QPS }), AddedP50: NA, AddedP99: NA,
		}
		for e := 0; e < 2; e++ {
			l.CoresPer1000[e] = med(rs, func(r Run) Num { return div(div(r.CPU[e], r.Seconds), r.QPS/1000) })
		}
		return l
	}
	s.Lat200, s.Lat1000 = lat(pick(TestLat200)), lat(pick(TestLat1000))

	cr := pick(TestConnRate)
	s.ConnPerSec = med(cr, func(r Run) Num { return r.ConnPerSec })
	for e := 0; e < 2; e++ {
		s.CPUmsPerConn[e] = med(cr, func(r Run) Num { return div(r.CPU[e]*1000, Num(r.Conns)) })
	}
	s.CPUmsConnBoth = med(cr, func(r Run) Num { return div(add(r.CPU[0], r.CPU[1])*1000, Num(r.Conns)) })

	s.RSSRestMiB = [2]Num{NA, NA}
	s.KiBPerIdleConn = [2]Num{NA, NA}
	for _, r := range pick(TestIdle) {
		s.IdleConns = r.Conns
		for e := 0; e < 2; e++ {
			s.RSSRestMiB[e] = div(r.RSSRestKiB[e], 1024)
			s.KiBPerIdleConn[e] = div(sub(r.RSSIdleKiB[e], r.RSSRestKiB[e]), Num(r.Conns))
		}
	}
	s.Stream1VsDirect, s.Stream1VsGhost, s.Stream8VsDirect, s.Stream8VsGhost, s.ConnVsDirect = NA, NA, NA, NA, NA
	return s
}

// Target is one of issue 3's performance targets for Ambit, judged on a run.
type Target struct {
	Name   string `json:"name"`
	Want   string `json:"want"`
	Value  Num    `json:"value"`
	Unit   string `json:"unit"`
	Met    *bool  `json:"met"` // nil: not measured
	Detail string `json:"detail,omitempty"`
}

func maxNum(a, b Num) Num {
	switch {
	case !a.OK():
		return b
	case !b.OK():
		return a
	case a > b:
		return a
	}
	return b
}

// targets judges the ambit path against issue 3, and the ambit-policy path against the
// ambit path (issue 19).
func targets(sums []Summary) []Target {
	var ambit, ghost, withPolicy *Summary
	for i := range sums {
		switch sums[i].Path {
		case "ambit":
			ambit = &sums[i]
		case "ghostunnel":
			ghost = &sums[i]
		case PathPolicy:
			withPolicy = &sums[i]
		}
	}
	if ambit == nil {
		return nil
	}
	judge := func(t Target, ok func(Num) bool) Target {
		if t.Value.OK() {
			m := ok(t.Value)
			t.Met = &m
		}
		return t
	}
	atLeast := func(min Num) func(Num) bool { return func(v Num) bool { return v >= min } }
	atMost := func(max Num) func(Num) bool { return func(v Num) bool { return v <= max } }

	ghostP50 := NA
	if ghost != nil {
		ghostP50 = ghost.Lat200.P50
	}
	latGap := sub(ambit.Lat200.P50, ghostP50)
	policyConn, policyStream := NA, NA
	if withPolicy != nil {
		policyConn = div(withPolicy.ConnPerSec, ambit.ConnPerSec)
		policyStream = div(withPolicy.Stream1Gbps, ambit.Stream1Gbps)
	}
	const policyDetail = PathPolicy + " median over ambit median, same run"
	return []Target{
		judge(Target{Name: "single-stream throughput vs direct", Want: ">= 0.45x", Value: ambit.Stream1VsDirect, Unit: "x"}, atLeast(0.45)),
		judge(Target{Name: "single-stream throughput vs ghostunnel", Want: ">= 1.0x", Value: ambit.Stream1VsGhost, Unit: "x"}, atLeast(1.0)),
		judge(Target{Name: "CPU per GB, both ends (single stream)", Want: "<= 3.0", Value: ambit.Stream1CPUBoth, Unit: "CPU-s/GB"}, atMost(3.0)),
		judge(Target{Name: "added p50 at 200 rps vs ghostunnel's", Want: "<= ghostunnel + 0.1 ms", Value: latGap, Unit: "ms over ghostunnel",
			Detail: "ambit p50 minus ghostunnel p50 (equal to the difference of the added latencies over direct)"}, atMost(0.1)),
		judge(Target{Name: "cores per ztunnel per 1000 rps", Want: "<= 0.1", Value: maxNum(ambit.Lat1000.CoresPer1000[0], ambit.Lat1000.CoresPer1000[1]), Unit: "cores (busier end)"}, atMost(0.1)),
		judge(Target{Name: "memory per idle connection per end", Want: "<= 40 KiB", Value: maxNum(ambit.KiBPerIdleConn[0], ambit.KiBPerIdleConn[1]), Unit: "KiB (larger end)"}, atMost(40)),
		judge(Target{Name: "pooled connection rate vs direct", Want: ">= 0.5x", Value: ambit.ConnVsDirect, Unit: "x"}, atLeast(0.5)),
		judge(Target{Name: "pooled connection rate, 1,000 policies vs none", Want: ">= 0.95x", Value: policyConn, Unit: "x", Detail: policyDetail}, atLeast(0.95)),
		judge(Target{Name: "single-stream throughput, 1,000 policies vs none", Want: ">= 0.95x", Value: policyStream, Unit: "x", Detail: policyDetail}, atLeast(0.95)),
	}
}

// sumMetric adds up the samples of a Prometheus counter in text exposition format,
// those whose labels include every one of labels (`key="value"`) when given.
func sumMetric(text, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		end := strings.LastIndexByte(rest, '}')
		if !allIn(rest[:end+1], labels) {
			continue
		}
		fs := strings.Fields(rest[end+1:])
		if len(fs) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fs[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func allIn(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
