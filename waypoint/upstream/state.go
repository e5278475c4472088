package upstream

import (
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/ambitmesh/ambit/discovery"
)

// pickState is an immutable view of the cluster for picks, rebuilt (under
// the cluster's lock) whenever hosts, their health or the policy change.
type pickState struct {
	prios []*prioState
	// cumLoad[i] is the summed percentage load of priorities 0..i (Envoy's
	// per-priority load, 100 in total).
	cumLoad []uint32
	total   int
}

type prioState struct {
	hosts   []*Host // all hosts of the priority
	healthy int
	panic   bool
	// use are the hosts picks choose from: the healthy ones, or all in panic.
	use []*Host
	// Without locality weights, one picker over use; with them (Distribute),
	// one per locality group, chosen by cumulative group weight.
	picker    picker
	groups    []picker
	cumWeight []float64
}

func (st *pickState) choosePriority(hash uint64) int {
	if len(st.prios) == 1 {
		return 0
	}
	v := uint32(hash%100) + 1
	for i, c := range st.cumLoad {
		if v <= c {
			return i
		}
	}
	return 0
}

func (ps *prioState) pick(c *Cluster, hash uint64, attempt int) *Host {
	if ps.groups == nil {
		return ps.picker.pick(c, hash, attempt)
	}
	x := float64(c.rand()>>11) / (1 << 53) * ps.cumWeight[len(ps.cumWeight)-1]
	g, _ := slices.BinarySearch(ps.cumWeight, x)
	return ps.groups[min(g, len(ps.groups)-1)].pick(c, hash, attempt)
}

// rebuildLocked recomputes priorities, health, priority loads and pickers.
func (c *Cluster) rebuildLocked() {
	pol := c.pol.Load()
	st := &pickState{}
	assign := c.priorities(pol)
	var byPrio [][]*Host
	for i, h := range c.order {
		p := assign.prio[i]
		h.priority = p
		if p < 0 {
			continue // a locality Distribute sends nothing to
		}
		for len(byPrio) <= p {
			byPrio = append(byPrio, nil)
		}
		byPrio[p] = append(byPrio[p], h)
		st.total++
	}
	threshold := uint32(50) // Envoy's default; without a detector all hosts are healthy anyway
	if pol.Outlier != nil {
		threshold = pol.Outlier.MinHealthPercent
	}
	for _, hosts := range byPrio {
		ps := &prioState{hosts: hosts}
		for _, h := range hosts {
			if !h.ejected {
				ps.healthy++
			}
		}
		st.prios = append(st.prios, ps)
	}
	if len(st.prios) == 0 {
		st.prios = []*prioState{{}}
	}
	st.cumLoad = priorityLoads(st.prios, threshold)
	for _, ps := range st.prios {
		ps.use = ps.hosts
		if !ps.panic {
			ps.use = make([]*Host, 0, ps.healthy)
			for _, h := range ps.hosts {
				if !h.ejected {
					ps.use = append(ps.use, h)
				}
			}
		}
		if len(ps.use) > 0 {
			c.buildPickers(pol, ps, assign.groupWeight)
		}
	}
	c.state.Store(st)
}

// priorityLoads is Envoy's LoadBalancerBase: a priority's health is its
// healthy share times the overprovisioning factor, capped at 100; load fills
// priorities in order up to their health (scaled when the total health is
// below 100); a priority whose healthy share is below the panic threshold
// uses all its hosts, unless the total health is 100; when all priorities
// panic, load follows host counts. It sets ps.panic and returns the
// cumulative loads.
func priorityLoads(prios []*prioState, threshold uint32) []uint32 {
	n := len(prios)
	health := make([]uint32, n)
	var sum uint32
	for i, ps := range prios {
		if len(ps.hosts) > 0 {
			health[i] = min(100, uint32(Overprovisioning*ps.healthy/len(ps.hosts)))
		}
		sum += health[i]
	}
	avail := min(100, sum)
	load := make([]uint32, n)
	if avail > 0 {
		remaining, first := uint32(100), -1
		for i := range prios {
			if first < 0 && health[i] > 0 {
				first = i
			}
			load[i] = min(remaining, health[i]*100/avail)
			remaining -= load[i]
		}
		load[first] += remaining
	}
	switch {
	case threshold == 0 && avail == 0:
		// Nothing healthy and panic disabled: P0 gets the load, and no host.
		load[0] = 100
	default:
		total := true
		for _, ps := range prios {
			pct := 0.0
			if len(ps.hosts) > 0 {
				pct = 100 * float64(ps.healthy) / float64(len(ps.hosts))
			}
			ps.panic = avail != 100 && pct < float64(threshold)
			total = total && ps.panic
		}
		if total {
			hosts := 0
			for _, ps := range prios {
				hosts += len(ps.hosts)
			}
			if hosts == 0 {
				clear(load)
				load[0] = 100
				break
			}
			remaining, first := uint32(100), -1
			for i, ps := range prios {
				if first < 0 && len(ps.hosts) > 0 {
					first = i
				}
				load[i] = uint32(100 * len(ps.hosts) / hosts)
				remaining -= load[i]
			}
			load[first] += remaining
		}
	}
	for i := 1; i < n; i++ {
		load[i] += load[i-1]
	}
	return load
}

// buildPickers builds ps's picker(s) over ps.use.
func (c *Cluster) buildPickers(pol *Policy, ps *prioState, groupWeight map[string]float64) {
	weights := func(hs []*Host) []float64 {
		w := make([]float64, len(hs))
		for i, h := range hs {
			w[i] = float64(h.ep.Load().Weight)
		}
		return w
	}
	if groupWeight == nil {
		ps.picker = newPicker(&pol.LB, ps.use, weights(ps.use))
		return
	}
	// Locality weights: Envoy scales a locality's weight by its availability
	// (healthy share times the overprovisioning factor, capped at 1), except
	// in panic.
	type group struct {
		hosts         []*Host
		healthy, all  int
		weight, hostW float64
	}
	groups := map[string]*group{}
	var keys []string
	for _, h := range ps.hosts {
		k := h.ep.Load().Locality.String()
		g := groups[k]
		if g == nil {
			g = &group{weight: groupWeight[k]}
			groups[k] = g
			keys = append(keys, k)
		}
		g.all++
		if !h.ejected {
			g.healthy++
		}
	}
	for _, h := range ps.use {
		g := groups[h.ep.Load().Locality.String()]
		g.hosts = append(g.hosts, h)
		g.hostW += float64(h.ep.Load().Weight)
	}
	for _, g := range groups {
		if !ps.panic {
			g.weight *= min(1, float64(Overprovisioning*g.healthy)/float64(100*g.all))
		}
	}
	if pol.LB.Algorithm.consistent() {
		// One table: a host's share is its share of its locality's weight.
		var hw []float64
		for _, h := range ps.use {
			g := groups[h.ep.Load().Locality.String()]
			hw = append(hw, float64(h.ep.Load().Weight)/g.hostW*g.weight)
		}
		if slices.Max(hw) <= 0 {
			hw = weights(ps.use)
		}
		ps.picker = newPicker(&pol.LB, ps.use, hw)
		return
	}
	var cum float64
	for _, k := range keys {
		g := groups[k]
		if len(g.hosts) == 0 || g.weight <= 0 {
			continue
		}
		cum += g.weight
		ps.groups = append(ps.groups, newPicker(&pol.LB, g.hosts, weights(g.hosts)))
		ps.cumWeight = append(ps.cumWeight, cum)
	}
	if len(ps.groups) == 0 {
		ps.groups, ps.cumWeight = nil, nil
		ps.picker = newPicker(&pol.LB, ps.use, weights(ps.use))
	}
}

// assignment is the priority of each host of c.order (-1: no traffic) and,
// with Distribute, each locality's weight.
type assignment struct {
	prio        []int
	groupWeight map[string]float64
}

// priorities assigns Istio's locality priorities relative to the waypoint
// (loadbalancer.go: applyFailoverPriorities, applyLocalityFailover) and
// compacts them to 0..n-1.
func (c *Cluster) priorities(pol *Policy) assignment {
	a := assignment{prio: make([]int, len(c.order))}
	lp := &pol.Locality
	if lp.Enabled && len(lp.Distribute) > 0 {
		a.groupWeight = c.distribute(lp.Distribute, a.prio)
		return a
	}
	if !lp.active(pol.Outlier != nil) {
		return a
	}
	for i, h := range c.order {
		ep := h.ep.Load()
		p := 0
		if len(lp.FailoverPriority) > 0 {
			if len(c.local.labels) > 0 {
				p = labelPriority(lp.FailoverPriority, c.local.labels, ep.Labels)
			}
			if len(lp.Failover) > 0 {
				p = p*5 + localityPriority(c.local.locality, ep.Locality, lp.Failover)
			}
		} else {
			p = localityPriority(c.local.locality, ep.Locality, lp.Failover)
		}
		a.prio[i] = p
	}
	distinct := slices.Compact(slices.Sorted(slices.Values(a.prio)))
	for i, p := range a.prio {
		a.prio[i], _ = slices.BinarySearch(distinct, p)
	}
	return a
}

// localityPriority is Istio's LbPriority with region failover: 0 same
// region/zone/subzone, 1 same region/zone, 2 same region, 3 other regions,
// 4 other regions than the failover target of the waypoint's region.
func localityPriority(self, ep discovery.Locality, failover []Failover) int {
	switch {
	case self.Region != ep.Region:
		for _, f := range failover {
			if f.From == self.Region {
				if ep.Region != f.To {
					return 4
				}
				break
			}
		}
		return 3
	case self.Zone != ep.Zone:
		return 2
	case self.Subzone != ep.Subzone:
		return 1
	}
	return 0
}

// labelPriority is Istio's failoverPriority: the first label (in order) whose
// value differs from the waypoint's ("key=value" fixes the value) decides:
// mismatching the j-th of n labels is priority n-j; matching all is 0.
func labelPriority(prio []string, self, ep map[string]string) int {
	for j, l := range prio {
		key, want, fixed := strings.Cut(l, "=")
		if !fixed {
			want = self[key]
		}
		if ep[key] != want {
			return len(prio) - j
		}
	}
	return 0
}

// distribute applies the first Distribute rule whose From matches the
// waypoint: the localities of each To pattern share its weight in proportion
// to their endpoints' weights (Istio: ceil(weight * share)); endpoints of
// other localities get no traffic (prio -1).
func (c *Cluster) distribute(rules []Distribute, prio []int) map[string]float64 {
	var rule *Distribute
	for i := range rules {
		if localityMatch(c.local.locality, rules[i].From) {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return nil
	}
	locWeight := map[string]float64{} // locality -> its endpoints' weights
	var locs []discovery.Locality
	for _, h := range c.order {
		ep := h.ep.Load()
		k := ep.Locality.String()
		if _, ok := locWeight[k]; !ok {
			locs = append(locs, ep.Locality)
		}
		locWeight[k] += float64(ep.Weight)
	}
	out := map[string]float64{}
	for _, to := range rule.To {
		var matched []string
		var total float64
		for _, l := range locs {
			k := l.String()
			if _, done := out[k]; done || !localityMatch(l, to.Locality) {
				continue
			}
			matched = append(matched, k)
			total += locWeight[k]
		}
		for _, k := range matched {
			out[k] = math.Ceil(locWeight[k] * float64(to.Weight) / total)
		}
	}
	for i, h := range c.order {
		if _, ok := out[h.ep.Load().Locality.String()]; !ok {
			prio[i] = -1
		}
	}
	return out
}

// localityMatch is Istio's LocalityMatch: "region/zone/subzone" with "*" for
// any, a missing zone or subzone matching any.
func localityMatch(l discovery.Locality, pattern string) bool {
	parts := strings.SplitN(pattern, "/", 3)
	want := [3]string{}
	copy(want[:], parts)
	got := [3]string{l.Region, l.Zone, l.Subzone}
	for i := range 3 {
		if want[i] == "*" || i > 0 && want[i] == "" {
			continue
		}
		if want[i] != got[i] {
			return false
		}
	}
	return true
}

// topologyLabels returns labels with the topology labels Istio adds to
// proxies and endpoints, from the locality and node, where labels lack them.
func topologyLabels(labels map[string]string, l discovery.Locality, node string) map[string]string {
	add := map[string]string{LabelRegion: l.Region, LabelZone: l.Zone, LabelSubzone: l.Subzone, LabelHostname: node}
	var out map[string]string
	for k, v := range add {
		if _, ok := labels[k]; ok || v == "" {
			continue
		}
		if out == nil {
			out = maps.Clone(labels)
			if out == nil {
				out = map[string]string{}
			}
		}
		out[k] = v
	}
	if out == nil {
		return labels
	}
	return out
}
