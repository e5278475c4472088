package main

// L7Summary is one L7 hop's figures: medians over repetitions, ratios from those.
type L7Summary struct {
	Hop string `json:"hop"`
	// At the highest rate the load reaches.
	RPS        Num `json:"max_rps"`
	HopCores   Num `json:"hop_cores"`          // the hop's CPU over the run's wall time
	RPSPerCore Num `json:"rps_per_hop_core"`   // requests per CPU-second of the hop
	VsGoProxy  Num `json:"vs_go_reverseproxy"` // RPSPerCore over go-reverseproxy's
	RSSMiB     Num `json:"hop_rss_mib"`        // after the max-rate run
	// At l7Rate requests per second.
	RateP50      Num    `json:"p50_ms"`
	RateP90      Num    `json:"p90_ms"`
	RateP99      Num    `json:"p99_ms"`
	AddedP50     Num    `json:"added_p50_ms"` // over l4-only
	AddedP99     Num    `json:"added_p99_ms"`
	CoresPer1000 Num    `json:"hop_cores_per_1000_rps"`
	Note         string `json:"note,omitempty"`
}

// summariseL7 reduces the L7 runs of every hop (in order) to medians and ratios.
func summariseL7(hops []string, runs []Run, notes map[string]string) []L7Summary {
	var out []L7Summary
	for _, h := range hops {
		s := L7Summary{Hop: h, Note: notes[h]}
		mx, rate := okRuns(runs, h, testL7Max), okRuns(runs, h, testL7Rate)
		s.RPS = med(mx, func(r Run) Num { return r.QPS })
		s.HopCores = med(mx, func(r Run) Num { return div(r.CPU[0], r.Seconds) })
		s.RPSPerCore = med(mx, func(r Run) Num { return div(r.Requests, r.CPU[0]) })
		s.RSSMiB = med(mx, func(r Run) Num { return div(r.HopRSSKiB, 1024) })
		s.RateP50 = med(rate, func(r Run) Num { return r.P50 })
		s.RateP90 = med(rate, func(r Run) Num { return r.P90 })
		s.RateP99 = med(rate, func(r Run) Num { return r.P99 })
		s.CoresPer1000 = med(rate, func(r Run) Num { return div(div(r.CPU[0], r.Seconds), r.QPS/1000) })
		s.AddedP50, s.AddedP99, s.VsGoProxy = NA, NA, NA
		out = append(out, s)
	}
	var l4, gp *L7Summary
	for i := range out {
		switch out[i].Hop {
		case HopL4:
			l4 = &out[i]
		case HopGoProxy:
			gp = &out[i]
		}
	}
	for i := range out {
		s := &out[i]
		if l4 != nil && s.Hop != HopL4 {
			s.AddedP50, s.AddedP99 = sub(s.RateP50, l4.RateP50), sub(s.RateP99, l4.RateP99)
		}
		if gp != nil && s.Hop != HopL4 {
			s.VsGoProxy = div(s.RPSPerCore, gp.RPSPerCore)
		}
	}
	return out
}

// l7Targets judges the waypoint against issue 20.
func l7Targets(sums []L7Summary) []Target {
	var wp *L7Summary
	for i := range sums {
		if sums[i].Hop == HopWaypoint {
			wp = &sums[i]
		}
	}
	if wp == nil {
		return nil
	}
	judge := func(t Target, min Num) Target {
		if t.Value.OK() {
			m := t.Value >= min
			t.Met = &m
		}
		return t
	}
	return []Target{
		judge(Target{Name: "waypoint requests per second per core (L7)", Want: ">= 10,000", Value: wp.RPSPerCore, Unit: "rps/core"}, 10000),
		judge(Target{Name: "waypoint rps per core vs Go's httputil.ReverseProxy (L7)", Want: ">= 1.3x", Value: wp.VsGoProxy, Unit: "x",
			Detail: "both as the hop on node3, same run"}, 1.3),
	}
}

// summariseL7Fault reduces the fault case's runs (none: nil).
func summariseL7Fault(runs []Run, notes map[string]string) []L7FaultSummary {
	var out []L7FaultSummary
	for _, c := range []string{FaultNoOD, FaultOD} {
		rs := okRuns(runs, c, TestL7Fault)
		if len(rs) == 0 && notes[c] == "" {
			continue
		}
		out = append(out, L7FaultSummary{
			Case: c, Note: notes[c],
			Requests:  med(rs, func(r Run) Num { return r.Requests }),
			ErrorRate: med(rs, func(r Run) Num { return div(r.Failed, r.Requests) }),
			P50:       med(rs, func(r Run) Num { return r.P50 }),
			P99:       med(rs, func(r Run) Num { return r.P99 }),
		})
	}
	return out
}
