package main

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
)

// Env is what every report records about the machine and the run.
type Env struct {
	Mode       string  `json:"mode"` // "full" or "smoke"
	Started    string  `json:"started"`
	Seconds    float64 `json:"seconds"`
	GoVersion  string  `json:"go_version"`
	GOMAXPROCS int     `json:"gomaxprocs"` // the bench's own, and the Go peers'
	// ZtunnelProcs is ztunnel's -gomaxprocs setting in this run.
	ZtunnelProcs string            `json:"ztunnel_gomaxprocs,omitempty"`
	CPUs         int               `json:"cpus"`
	Kernel       string            `json:"kernel"`
	CPUModel     string            `json:"cpu_model,omitempty"`
	LoadStart    [3]float64        `json:"loadavg_start"`
	LoadEnd      [3]float64        `json:"loadavg_end"`
	LoadMax      float64           `json:"loadavg1_max"` // highest 1-minute load seen at the start of a measurement
	Peers        map[string]string `json:"peers"`
	NoFile       uint64            `json:"rlimit_nofile"`
	Repetitions  int               `json:"repetitions"`
	Config       Durations         `json:"durations"`
	Notes        []string          `json:"notes,omitempty"`
}

// ztunnelProcs describes ztunnel's scheduler setting for the run's header; runs saved
// before it was recorded have none.
func (e Env) ztunnelProcs() string {
	if e.ZtunnelProcs == "" {
		return ""
	}
	return " (ztunnel -gomaxprocs=" + e.ZtunnelProcs + ")"
}

// Durations of each test, as run.
type Durations struct {
	StreamSeconds   float64 `json:"iperf3_seconds"`
	Lat200Seconds   float64 `json:"fortio_200rps_seconds"`
	Lat1000Seconds  float64 `json:"fortio_1000rps_seconds"`
	ConnSeconds     float64 `json:"connection_rate_seconds"`
	IdleConnections int     `json:"idle_connections"`
	PayloadBytes    int     `json:"fortio_payload_bytes"`
	L7MaxSeconds    float64 `json:"l7_max_rate_seconds,omitempty"`
	L7RateSeconds   float64 `json:"l7_1000rps_seconds,omitempty"`
}

// Report is the whole result, as written with -json.
type Report struct {
	Env     Env              `json:"env"`
	Summary []Summary        `json:"summary"`
	L7      []L7Summary      `json:"l7,omitempty"`
	L7Fault []L7FaultSummary `json:"l7_fault,omitempty"`
	Targets []Target         `json:"targets,omitempty"`
	Runs    []Run            `json:"runs"`
}

func (r *Report) WriteJSON(file string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	return os.WriteFile(file, append(b, '\n'), 0o644)
}

func f(n Num, prec int) string {
	if !n.OK() {
		return "-"
	}
	return fmt.Sprintf("%.*f", prec, float64(n))
}

func fx(n Num) string {
	if !n.OK() {
		return "-"
	}
	return fmt.Sprintf("%.2fx", float64(n))
}

func fsigned(n Num, prec int) string {
	if !n.OK() {
		return "-"
	}
	return fmt.Sprintf("%+.*f", prec, float64(n))
}

func pair(a, b Num, prec int) string { return f(a, prec) + " / " + f(b, prec) }

// WriteTable prints the summary for a terminal.
func (r *Report) WriteTable(w io.Writer) {
	e := r.Env
	fmt.Fprintf(w, "\nAmbit data-path benchmark (%s): %s, GOMAXPROCS=%d%s, %d CPUs, kernel %s\n", e.Mode, e.GoVersion, e.GOMAXPROCS, e.ztunnelProcs(), e.CPUs, e.Kernel)
	fmt.Fprintf(w, "load average at start %.2f %.2f %.2f, at end %.2f %.2f %.2f; %d repetition(s), medians shown; took %.0fs\n",
		e.LoadStart[0], e.LoadStart[1], e.LoadStart[2], e.LoadEnd[0], e.LoadEnd[1], e.LoadEnd[2], e.Repetitions, e.Seconds)
	if c := r.competition(); r.busy() {
		fmt.Fprintf(w, "WARNING: %s: other work competed with the benchmark, so absolute figures and even ratios are unreliable; rerun on a quiet machine\n", c)
	} else if c != "" {
		fmt.Fprintln(w, c)
	}
	for _, n := range e.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	if len(r.Summary) > 0 {
		r.writeL4Table(w)
	}
	r.writeL7Table(w)
	r.writeL7FaultTable(w)
	var failed []string
	for _, run := range r.Runs {
		if run.Error != "" {
			failed = append(failed, fmt.Sprintf("  %s %s rep %d: %s", run.Path, run.Test, run.Rep, run.Error))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "\n%d measurement(s) failed:\n%s\n", len(failed), strings.Join(failed, "\n"))
	}

	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\nAmbit against its targets (issues 3, 19 and 20)")
		tw2 := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw2, "target\twant\tmeasured\tverdict")
		for _, t := range r.Targets {
			fmt.Fprintf(tw2, "%s\t%s\t%s %s\t%s\n", t.Name, t.Want, f(t.Value, 3), t.Unit, verdict(t.Met))
		}
		tw2.Flush()
	}
}

// writeL4Table prints the data-path tables (throughput, latency, connections).
func (r *Report) writeL4Table(w io.Writer) {
	fmt.Fprintln(w, "CPU and memory are per tunnel end: client side (node1) / server side (node2).")

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "\nThroughput (iperf3)")
	fmt.Fprintln(tw, "path\t1 stream Gbit/s\tvs direct\tvs ghostunnel\tCPU-s/GB c / s\tboth\tmachine\t8 streams Gbit/s\tvs direct\tvs ghostunnel\tCPU-s/GB both\t")
	for _, s := range r.Summary {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Path,
			f(s.Stream1Gbps, 2), fx(s.Stream1VsDirect), fx(s.Stream1VsGhost), pair(s.Stream1CPUPerGB[0], s.Stream1CPUPerGB[1], 2), f(s.Stream1CPUBoth, 2), f(s.Stream1Machine, 2),
			f(s.Stream8Gbps, 2), fx(s.Stream8VsDirect), fx(s.Stream8VsGhost), f(s.Stream8CPUBoth, 2))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nLatency (fortio tcp echo, %d B, ms)\n", r.Env.Config.PayloadBytes)
	fmt.Fprintln(tw, "path\t200 rps p50\tp90\tp99\tp99.9\tadded p50\tadded p99\tcores/1000rps c / s\t1000 rps p50\tp99\tadded p50\tcores/1000rps c / s\t")
	for _, s := range r.Summary {
		a, b := s.Lat200, s.Lat1000
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Path,
			f(a.P50, 3), f(a.P90, 3), f(a.P99, 3), f(a.P999, 3), fsigned(a.AddedP50, 3), fsigned(a.AddedP99, 3), pair(a.CoresPer1000[0], a.CoresPer1000[1], 3),
			f(b.P50, 3), f(b.P99, 3), fsigned(b.AddedP50, 3), pair(b.CoresPer1000[0], b.CoresPer1000[1], 3))
	}
	tw.Flush()

	fmt.Fprintln(w, "\nConnections and memory")
	fmt.Fprintln(tw, "path\tnew conn/s\tvs direct\tCPU-ms/conn c / s\tboth\tRSS at rest MiB c / s\tidle conns\tKiB per idle conn c / s\t")
	for _, s := range r.Summary {
		idle := "-"
		if s.IdleConns > 0 {
			idle = fmt.Sprint(s.IdleConns)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Path,
			f(s.ConnPerSec, 0), fx(s.ConnVsDirect), pair(s.CPUmsPerConn[0], s.CPUmsPerConn[1], 3), f(s.CPUmsConnBoth, 3),
			pair(s.RSSRestMiB[0], s.RSSRestMiB[1], 1), idle, pair(s.KiBPerIdleConn[0], s.KiBPerIdleConn[1], 1))
	}
	tw.Flush()
	for _, s := range r.Summary {
		if s.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", s.Path, s.Note)
		}
	}
}

// competingCores is how much CPU other processes may use during a measurement before it
// counts as disturbed: a quarter of one CPU.
const competingCores = 0.25

// loaded counts the measurements that other work disturbed: processes outside the
// benchmark kept more than competingCores busy while it ran, or, in reports from before
// the harness measured that, the 1-minute load at its start was above twice the CPUs (a
// path itself keeps three or four tasks busy, and the load average trails: it stays high
// for minutes after the idle-connection test's thousands of stunnel threads have gone).
// The idle-connection test is left out: it makes its own load.
func (r *Report) loaded() (n, of int, most float64, measured bool) {
	for _, run := range r.Runs {
		if run.Test == TestIdle {
			continue
		}
		of++
		c, limit := run.Load1, 2*float64(r.Env.CPUs)
		if run.OtherCores != nil && run.OtherCores.OK() {
			c, limit, measured = float64(*run.OtherCores), competingCores, true
		}
		most = max(most, c)
		if limit > 0 && c > limit {
			n++
		}
	}
	return n, of, most, measured
}

// busy reports whether other work competed for the CPUs during a large part of the run
// (more than a quarter of the measurements); medians over repetitions absorb less.
func (r *Report) busy() bool {
	n, of, _, _ := r.loaded()
	return of > 0 && 4*n > of
}

// competition says how many measurements other work disturbed ("" when none did).
func (r *Report) competition() string {
	n, of, most, measured := r.loaded()
	if n == 0 {
		return ""
	}
	if measured {
		return fmt.Sprintf("%d of %d measurements shared the %d CPUs with other processes using more than %.2f of a CPU (at most %.2f)", n, of, r.Env.CPUs, competingCores, most)
	}
	return fmt.Sprintf("%d of %d measurements started with the 1-minute load above %d on %d CPUs (at most %.1f)", n, of, 2*r.Env.CPUs, r.Env.CPUs, most)
}

func verdict(m *bool) string {
	switch {
	case m == nil:
		return "not measured"
	case *m:
		return "MET"
	}
	return "MISSED"
}

// bar is one bar of a chart.
type bar struct {
	label string
	value Num
}

// chart draws one horizontal bar chart; ref (if > 0) is drawn as a dashed target line.
func chart(b *strings.Builder, y int, title, unit string, bars []bar, ref float64, refLabel string) int {
	const left, width, rowH = 130, 420, 22
	max := ref
	for _, x := range bars {
		if x.value.OK() && float64(x.value) > max {
			max = float64(x.value)
		}
	}
	if max <= 0 {
		max = 1
	}
	fmt.Fprintf(b, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y+14, html.EscapeString(title))
	y += 24
	for i, x := range bars {
		yy := y + i*rowH
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, yy+15, html.EscapeString(x.label))
		if !x.value.OK() {
			fmt.Fprintf(b, `<text x="%d" y="%d" fill="#888">not measured</text>`+"\n", left+4, yy+15)
			continue
		}
		w := math.Max(1, float64(x.value)/max*width)
		color := "#7a8ca3"
		if isAmbit(x.label) {
			color = "#d9822b"
		}
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="%.1f" height="16" fill="%s"/>`+"\n", left, yy+2, w, color)
		fmt.Fprintf(b, `<text x="%.1f" y="%d">%s %s</text>`+"\n", float64(left)+w+6, yy+15, f(x.value, 2), html.EscapeString(unit))
	}
	h := len(bars) * rowH
	if ref > 0 {
		x := float64(left) + ref/max*width
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c0392b" stroke-dasharray="4 3"/>`+"\n", x, y, x, y+h)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="#c0392b" font-size="11">%s</text>`+"\n", x+3, y+h+12, html.EscapeString(refLabel))
		h += 14
	}
	return y + h + 16
}

// WriteSVG draws throughput ratios, added latency and CPU per GB as bar charts.
func (r *Report) WriteSVG(file string) error {
	var b strings.Builder
	y := 30
	var thr, lat, cpu []bar
	for _, s := range r.Summary {
		thr = append(thr, bar{s.Path, s.Stream1VsDirect})
		if s.Path != "direct" {
			lat = append(lat, bar{s.Path, s.Lat200.AddedP50})
			cpu = append(cpu, bar{s.Path, s.Stream1CPUBoth})
		}
	}
	y = chart(&b, y, "Single-stream throughput, ratio to direct TCP (higher is better)", "x", thr, 0.45, "target 0.45x")
	y = chart(&b, y, "Added p50 latency over direct at 200 rps, 1 KB echo (ms, lower is better)", "ms", lat, 0, "")
	y = chart(&b, y, "CPU-seconds per GB, both tunnel ends, 1 stream (lower is better)", "CPU-s/GB", cpu, 3.0, "target 3.0")
	head := fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="760" height="%d" font-family="sans-serif" font-size="12">`+"\n", y+10)
	head += `<rect width="100%" height="100%" fill="white"/>` + "\n"
	head += fmt.Sprintf(`<text x="10" y="16" font-size="11" fill="#555">%s</text>`+"\n",
		html.EscapeString(fmt.Sprintf("Ambit bench (%s) %s, GOMAXPROCS=%d, kernel %s, load %.2f at start, max %.1f, %s", r.Env.Mode, r.Env.GoVersion, r.Env.GOMAXPROCS, r.Env.Kernel, r.Env.LoadStart[0], r.Env.LoadMax, r.Env.Started)))
	return os.WriteFile(file, []byte(head+b.String()+"</svg>\n"), 0o644)
}

// WriteMarkdown writes the summary and the verdicts as Markdown tables (for
// docs/performance.md).
func (r *Report) WriteMarkdown(file string) error {
	var b strings.Builder
	e := r.Env
	fmt.Fprintf(&b, "Run of %s (%s mode, %d repetition(s), medians): %s, GOMAXPROCS=%d%s, %d CPUs (%s), kernel %s; "+
		"1-minute load average %.2f at start, %.2f at end, %.1f at most.\n\n",
		e.Started, e.Mode, e.Repetitions, e.GoVersion, e.GOMAXPROCS, e.ztunnelProcs(), e.CPUs, e.CPUModel, e.Kernel, e.LoadStart[0], e.LoadEnd[0], e.LoadMax)
	if c := r.competition(); r.busy() {
		fmt.Fprintf(&b, "**Other work competed with this run: %s. Absolute figures and even ratios are unreliable.**\n\n", c)
	} else if c != "" {
		fmt.Fprintf(&b, "%s.\n\n", c)
	}
	for _, n := range e.Notes {
		fmt.Fprintf(&b, "Note: %s.\n\n", n)
	}
	if len(r.Summary) > 0 {
		r.writeL4Markdown(&b)
	}
	r.writeL7Markdown(&b)
	r.writeL7FaultMarkdown(&b)
	if len(r.Targets) > 0 {
		b.WriteString("\n| target (issues 3, 19, 20) | want | measured | verdict |\n| --- | --- | ---: | --- |\n")
		for _, t := range r.Targets {
			fmt.Fprintf(&b, "| %s | %s | %s %s | **%s** |\n", t.Name, t.Want, f(t.Value, 3), t.Unit, verdict(t.Met))
		}
	}
	return os.WriteFile(file, []byte(b.String()), 0o644)
}

// writeL4Markdown writes the data-path tables.
func (r *Report) writeL4Markdown(b *strings.Builder) {
	b.WriteString("CPU and memory per tunnel end are client side (node1) / server side (node2).\n\n")
	b.WriteString("| path | 1 stream Gbit/s | vs direct | vs ghostunnel | CPU-s/GB c / s (both) | machine CPU-s/GB | 8 streams Gbit/s | vs direct | CPU-s/GB both |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.Summary {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s (%s) | %s | %s | %s | %s |\n", s.Path, f(s.Stream1Gbps, 2), fx(s.Stream1VsDirect), fx(s.Stream1VsGhost),
			pair(s.Stream1CPUPerGB[0], s.Stream1CPUPerGB[1], 2), f(s.Stream1CPUBoth, 2), f(s.Stream1Machine, 2), f(s.Stream8Gbps, 2), fx(s.Stream8VsDirect), f(s.Stream8CPUBoth, 2))
	}
	fmt.Fprintf(b, "\n| path | 200 rps p50 / p90 / p99 / p99.9 ms | added p50 / p99 | cores per 1000 rps c / s | 1000 rps p50 / p99 ms | added p50 | cores per 1000 rps c / s |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.Summary {
		a, c := s.Lat200, s.Lat1000
		fmt.Fprintf(b, "| %s | %s / %s / %s / %s | %s / %s | %s | %s / %s | %s | %s |\n", s.Path,
			f(a.P50, 3), f(a.P90, 3), f(a.P99, 3), f(a.P999, 3), fsigned(a.AddedP50, 3), fsigned(a.AddedP99, 3), pair(a.CoresPer1000[0], a.CoresPer1000[1], 3),
			f(c.P50, 3), f(c.P99, 3), fsigned(c.AddedP50, 3), pair(c.CoresPer1000[0], c.CoresPer1000[1], 3))
	}
	b.WriteString("\n| path | new conn/s | vs direct | CPU-ms/conn c / s (both) | RSS at rest MiB c / s | KiB per idle conn c / s |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.Summary {
		idle := pair(s.KiBPerIdleConn[0], s.KiBPerIdleConn[1], 1)
		if s.IdleConns > 0 {
			idle += fmt.Sprintf(" (%d conns)", s.IdleConns)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s (%s) | %s | %s |\n", s.Path, f(s.ConnPerSec, 0), fx(s.ConnVsDirect),
			pair(s.CPUmsPerConn[0], s.CPUmsPerConn[1], 3), f(s.CPUmsConnBoth, 3), pair(s.RSSRestMiB[0], s.RSSRestMiB[1], 1), idle)
	}
	for _, s := range r.Summary {
		if s.Note != "" {
			fmt.Fprintf(b, "\n%s: %s.\n", s.Path, s.Note)
		}
	}
}

// ReadReport loads a report written with -json, to render it again.
func ReadReport(file string) (*Report, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", file, err)
	}
	for _, run := range r.Runs {
		r.Env.LoadMax = max(r.Env.LoadMax, run.Load1)
	}
	return &r, nil
}

// ztunnelProcs returns ztunnel's -gomaxprocs setting given its extra arguments (the
// last one wins, as with the flag package) and the GOMAXPROCS environment variable it
// inherits, which fixes the value whatever the flag says.
func ztunnelProcs(args []string, env string) string {
	v := "auto"
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "gomaxprocs" || !strings.HasPrefix(a, "-") {
			continue
		}
		switch {
		case hasVal:
			v = val
		case i+1 < len(args):
			v = args[i+1]
		}
	}
	if env != "" && (v == "auto" || v == "runtime") {
		return v + ", fixed by GOMAXPROCS=" + env
	}
	return v
}
