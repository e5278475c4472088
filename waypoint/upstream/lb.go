package upstream

import (
	"cmp"
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// A picker chooses among a fixed set of hosts; it is built for one state of
// the cluster and read without locks.
type picker interface {
	// pick returns a host; attempt > 0 asks a consistent hash for another
	// position (Envoy's retry host predicate), others just draw again.
	pick(c *Cluster, hash uint64, attempt int) *Host
}

// weighted returns the hosts' weights, or nil when they are all equal.
func weighted(weights []float64) []float64 {
	for _, w := range weights {
		if w != weights[0] {
			return weights
		}
	}
	return nil
}

// newPicker builds the picker of lb over hosts (non-empty) with weights.
func newPicker(lb *LoadBalancer, hosts []*Host, weights []float64) picker {
	switch lb.Algorithm {
	case RoundRobin:
		return newRoundRobin(hosts, weighted(weights))
	case Random:
		// Envoy's RANDOM ignores weights.
		return randomPicker{hosts}
	case RingHash:
		return newRing(hosts, weights, lb.MinRingSize)
	case Maglev:
		return newMaglev(hosts, weights, lb.TableSize)
	}
	p := &leastRequest{hosts: hosts, choices: max(lb.ChoiceCount, 2)}
	if w := weighted(weights); w != nil {
		p.weights = w
		p.alias = newAlias(w)
	}
	return p
}

// leastRequest is Envoy's LEAST_REQUEST with N random choices. With unequal
// weights Envoy runs an EDF schedule on weight/(active+1) under a lock; here
// the candidates are drawn in proportion to weight and the one with fewer
// active requests per unit of weight wins (ties keep the first), so an idle
// cluster splits exactly by weight and a loaded one converges on the same
// active-per-weight balance, without a lock.
type leastRequest struct {
	hosts   []*Host
	weights []float64 // nil when equal
	alias   *alias
	choices int
}

func (p *leastRequest) draw(c *Cluster) int {
	if p.alias != nil {
		return p.alias.draw(c.rand())
	}
	return bounded(c.rand(), len(p.hosts))
}

func (p *leastRequest) pick(c *Cluster, _ uint64, _ int) *Host {
	best := p.draw(c)
	bestActive := p.hosts[best].active.Load()
	for range p.choices - 1 {
		i := p.draw(c)
		a := p.hosts[i].active.Load()
		if p.weights == nil {
			if a < bestActive {
				best, bestActive = i, a
			}
		} else if float64(a)*p.weights[best] < float64(bestActive)*p.weights[i] {
			best, bestActive = i, a
		}
	}
	return p.hosts[best]
}

// roundRobin cycles through the hosts, or through a smooth weighted schedule
// (each host as often as its weight, interleaved) when weights differ.
type roundRobin struct {
	hosts    []*Host
	schedule []int32 // nil when equal weights
}

// maxSchedule bounds a weighted round robin schedule; larger weight sums are
// scaled down.
const maxSchedule = 1 << 16

func newRoundRobin(hosts []*Host, weights []float64) *roundRobin {
	p := &roundRobin{hosts: hosts}
	if weights == nil {
		return p
	}
	var sum float64
	for _, w := range weights {
		sum += w
	}
	scale := 1.0
	if sum > maxSchedule {
		scale = maxSchedule / sum
	}
	ints := make([]int64, len(weights))
	var total int64
	for i, w := range weights {
		ints[i] = max(1, int64(math.Round(w*scale)))
		total += ints[i]
	}
	// Smooth weighted round robin (nginx): add each weight to its current
	// value, take the largest, subtract the total from it.
	cur := make([]int64, len(ints))
	p.schedule = make([]int32, total)
	for s := range p.schedule {
		best := 0
		for i := range ints {
			cur[i] += ints[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		p.schedule[s] = int32(best)
	}
	return p
}

func (p *roundRobin) pick(c *Cluster, _ uint64, _ int) *Host {
	n := c.rr.Add(1) - 1
	if p.schedule == nil {
		return p.hosts[n%uint64(len(p.hosts))]
	}
	return p.hosts[p.schedule[n%uint64(len(p.schedule))]]
}

type randomPicker struct{ hosts []*Host }

func (p randomPicker) pick(c *Cluster, _ uint64, _ int) *Host {
	return p.hosts[bounded(c.rand(), len(p.hosts))]
}

// ring is Envoy's ring hash (ketama): each host owns points xxHash64("addr_i")
// in proportion to its weight, the least weighted at least
// ceil(minRing * its share); a key goes to the first point at or after its
// hash.
type ring struct {
	hashes []uint64
	hosts  []*Host
}

func newRing(hosts []*Host, weights []float64, minRing uint64) *ring {
	norm, minW, _ := normalize(weights)
	scale := min(math.Ceil(minW*float64(minRing))/minW, MaxRingSize)
	type point struct {
		hash uint64
		host int
	}
	points := make([]point, 0, int(math.Ceil(scale)))
	var current, target float64
	buf := make([]byte, 0, 64)
	for i, h := range hosts {
		buf = append(buf[:0], h.key...)
		buf = append(buf, '_')
		base := len(buf)
		target += scale * norm[i]
		for n := 0; current < target; n++ {
			buf = strconv.AppendInt(buf[:base], int64(n), 10)
			points = append(points, point{xxhash.Sum64(buf), i})
			current++
		}
	}
	slices.SortFunc(points, func(a, b point) int { return cmp.Compare(a.hash, b.hash) })
	r := &ring{hashes: make([]uint64, len(points)), hosts: make([]*Host, len(points))}
	for i, p := range points {
		r.hashes[i], r.hosts[i] = p.hash, hosts[p.host]
	}
	return r
}

func (r *ring) pick(_ *Cluster, hash uint64, attempt int) *Host {
	i, _ := slices.BinarySearch(r.hashes, hash)
	if i == len(r.hashes) {
		i = 0
	}
	// Envoy: a retry host predicate moves along the ring.
	return r.hosts[(i+attempt)%len(r.hosts)]
}

// maglev is Google's Maglev table as Envoy builds it: hosts sorted by address
// fill the table in turns, each at the next free slot of its permutation
// (offset xxHash64(addr) mod M, skip xxHash64(addr, seed 1) mod (M-1) + 1),
// a host of weight w/max taking a turn every max/w rounds. Adding one host to
// N moves about 1/(N+1) of the keys.
type maglev struct {
	table []uint32
	hosts []*Host
}

func newMaglev(hosts []*Host, weights []float64, size uint64) *maglev {
	norm, _, maxW := normalize(weights)
	type entry struct {
		host               int
		offset, skip, next uint64
		weight, target     float64
	}
	order := make([]int, len(hosts))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(hosts[a].key, hosts[b].key) })
	entries := make([]entry, len(hosts))
	d := xxhash.NewWithSeed(1)
	for j, i := range order {
		d.ResetWithSeed(1)
		_, _ = d.WriteString(hosts[i].key)
		entries[j] = entry{host: i, offset: xxhash.Sum64String(hosts[i].key) % size,
			skip: d.Sum64()%(size-1) + 1, weight: norm[i]}
	}
	m := &maglev{table: make([]uint32, size), hosts: hosts}
	taken := make([]bool, size)
	filled := uint64(0)
	for iter := 1.0; filled < size; iter++ {
		for k := range entries {
			if filled == size {
				break
			}
			e := &entries[k]
			if iter*e.weight < e.target {
				continue
			}
			e.target += maxW
			slot := (e.offset + e.skip*e.next) % size
			for taken[slot] {
				e.next++
				slot = (e.offset + e.skip*e.next) % size
			}
			taken[slot] = true
			m.table[slot] = uint32(e.host)
			e.next++
			filled++
		}
	}
	return m
}

func (m *maglev) pick(_ *Cluster, hash uint64, attempt int) *Host {
	if attempt > 0 {
		// Envoy flips most bits of the hash for a retry.
		hash ^= ^uint64(0) - uint64(attempt) + 1
	}
	return m.hosts[m.table[hash%uint64(len(m.table))]]
}

// normalize returns weights scaled to sum to 1, with their minimum and maximum.
func normalize(weights []float64) (norm []float64, minW, maxW float64) {
	var sum float64
	for _, w := range weights {
		sum += w
	}
	norm = make([]float64, len(weights))
	minW = math.Inf(1)
	for i, w := range weights {
		norm[i] = w / sum
		minW, maxW = min(minW, norm[i]), max(maxW, norm[i])
	}
	return norm, minW, maxW
}

// alias is Vose's alias table: O(1) draws in proportion to weights.
type alias struct {
	prob  []uint32 // threshold on 32 random bits
	alias []int32
}

func newAlias(weights []float64) *alias {
	n := len(weights)
	norm, _, _ := normalize(weights)
	scaled := make([]float64, n)
	var small, large []int
	for i, w := range norm {
		scaled[i] = w * float64(n)
		if scaled[i] < 1 {
			small = append(small, i)
		} else {
			large = append(large, i)
		}
	}
	a := &alias{prob: make([]uint32, n), alias: make([]int32, n)}
	for len(small) > 0 && len(large) > 0 {
		s, l := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		a.prob[s] = uint32(scaled[s] * (1 << 32))
		a.alias[s] = int32(l)
		scaled[l] += scaled[s] - 1
		if scaled[l] < 1 {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	for _, i := range append(small, large...) {
		a.prob[i], a.alias[i] = math.MaxUint32, int32(i)
	}
	return a
}

// draw uses the low 32 bits of r for the column and the high 32 for the coin.
func (a *alias) draw(r uint64) int {
	i := bounded(r&math.MaxUint32, len(a.prob))
	if uint32(r>>32) < a.prob[i] || a.prob[i] == math.MaxUint32 {
		return i
	}
	return int(a.alias[i])
}

// bounded maps r (its low 32 bits) onto [0, n) without division (Lemire).
func bounded(r uint64, n int) int { return int(((r & math.MaxUint32) * uint64(n)) >> 32) }
