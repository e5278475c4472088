package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// writeL7Table prints the L7 case for a terminal.
func (r *Report) writeL7Table(w io.Writer) {
	if len(r.L7) == 0 {
		return
	}
	fmt.Fprintf(w, "\nL7 (HTTP/1.1 keep-alive, %d B POST echoed, %d connections; the hop on node3; CPU and memory of the hop)\n", r.Env.Config.PayloadBytes, l7Conns)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "hop\tmax rps\thop cores\trps/hop core\tvs go-reverseproxy\tRSS MiB\t1000 rps p50\tp90\tp99\tadded p50\tadded p99\thop cores/1000rps\t")
	for _, s := range r.L7 {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Hop, f(s.RPS, 0), f(s.HopCores, 2), f(s.RPSPerCore, 0), fx(s.VsGoProxy),
			f(s.RSSMiB, 1), f(s.RateP50, 3), f(s.RateP90, 3), f(s.RateP99, 3), fsigned(s.AddedP50, 3), fsigned(s.AddedP99, 3), f(s.CoresPer1000, 3))
	}
	tw.Flush()
	for _, s := range r.L7 {
		if s.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", s.Hop, s.Note)
		}
	}
}

// writeL7Markdown writes the L7 case as a Markdown table.
func (r *Report) writeL7Markdown(b *strings.Builder) {
	if len(r.L7) == 0 {
		return
	}
	fmt.Fprintf(b, "\n| L7 hop | max rps | hop cores | rps per hop core | vs go-reverseproxy | RSS MiB | %d rps p50 / p99 ms | added p50 / p99 | hop cores per 1000 rps |\n", l7Rate)
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.L7 {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s |\n", s.Hop, f(s.RPS, 0), f(s.HopCores, 2), f(s.RPSPerCore, 0), fx(s.VsGoProxy),
			f(s.RSSMiB, 1), f(s.RateP50, 3), f(s.RateP99, 3), fsigned(s.AddedP50, 3), fsigned(s.AddedP99, 3), f(s.CoresPer1000, 3))
	}
	for _, s := range r.L7 {
		if s.Note != "" {
			fmt.Fprintf(b, "\n%s: %s.\n", s.Hop, s.Note)
		}
	}
}

// writeL7FaultTable prints the fault case for a terminal.
func (r *Report) writeL7FaultTable(w io.Writer) {
	if len(r.L7Fault) == 0 {
		return
	}
	fmt.Fprintf(w, "\nL7 with a failing endpoint (%d rps through the waypoint to 3 endpoints, one answering 503)\n", l7Rate)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\trequests\terror rate %\tp50 ms\tp99 ms\t")
	for _, s := range r.L7Fault {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", s.Case, f(s.Requests, 0), f(s.ErrorRate*100, 2), f(s.P50, 3), f(s.P99, 3))
	}
	tw.Flush()
	for _, s := range r.L7Fault {
		if s.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", s.Case, s.Note)
		}
	}
}

// writeL7FaultMarkdown writes the fault case as a Markdown table.
func (r *Report) writeL7FaultMarkdown(b *strings.Builder) {
	if len(r.L7Fault) == 0 {
		return
	}
	fmt.Fprintf(b, "\n| L7, one of 3 endpoints answering 503, %d rps | requests | error rate | p50 ms | p99 ms |\n", l7Rate)
	b.WriteString("| --- | ---: | ---: | ---: | ---: |\n")
	for _, s := range r.L7Fault {
		fmt.Fprintf(b, "| %s | %s | %s %% | %s | %s |\n", s.Case, f(s.Requests, 0), f(s.ErrorRate*100, 2), f(s.P50, 3), f(s.P99, 3))
	}
	for _, s := range r.L7Fault {
		if s.Note != "" {
			fmt.Fprintf(b, "\n%s: %s.\n", s.Case, s.Note)
		}
	}
}
