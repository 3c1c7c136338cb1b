package dht

import (
	"container/list"
	"math"
	"net/netip"
	"slices"
	"time"
)

// Latency tiers (Coral-style). RTT samples are kept per network prefix (IPv4
// /16, IPv6 /32), not per peer, so memory stays bounded by the LRU of
// MaxTierPrefixes prefixes whatever the network size. The prefixes are
// clustered into 1..MaxTiers tiers by 1-D k-means over their smoothed RTT;
// tier 0 is the fastest.

// tierPrefix returns the tiering key of an address: its /16 (IPv4) or /32
// (IPv6) prefix. ok is false for an invalid address.
func tierPrefix(a netip.Addr) (netip.Prefix, bool) { return addrPrefix(a, 16, 32) }

// diversityPrefix returns the key of the per-bucket diversity cap: IPv4 /24
// or IPv6 /48.
func diversityPrefix(a netip.Addr) (netip.Prefix, bool) { return addrPrefix(a, 24, 48) }

// addrPrefix returns the /v4bits or /v6bits prefix of a (unmapped).
func addrPrefix(a netip.Addr, v4bits, v6bits int) (netip.Prefix, bool) {
	if !a.IsValid() {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	bits := v6bits
	if a.Is4() {
		bits = v4bits
	}
	p, err := a.Prefix(bits)
	return p, err == nil
}

type rttEntry struct {
	prefix  netip.Prefix
	srtt    float64 // smoothed RTT in milliseconds
	samples uint32
}

// rttTable is the LRU of RTT per prefix, with the current tier assignment.
// Not safe for concurrent use; the DHT's mutex guards it.
type rttTable struct {
	max   int
	ll    *list.List // of *rttEntry, most recent at front
	index map[netip.Prefix]*list.Element

	// centroids are the tier centres in ms, ascending; tierOf maps a prefix
	// to its tier. Both are recomputed by recluster.
	centroids []float64
	tierOf    map[netip.Prefix]uint8
}

func newRTTTable(max int) *rttTable {
	return &rttTable{max: max, ll: list.New(), index: make(map[netip.Prefix]*list.Element)}
}

// observe records one RTT sample for the prefix of a.
func (t *rttTable) observe(a netip.Addr, rtt time.Duration) {
	p, ok := tierPrefix(a)
	if !ok || rtt <= 0 {
		return
	}
	ms := float64(rtt) / float64(time.Millisecond)
	if el, ok := t.index[p]; ok {
		e := el.Value.(*rttEntry)
		e.srtt += (ms - e.srtt) / 8 // RFC 6298 smoothing
		e.samples++
		t.ll.MoveToFront(el)
		return
	}
	if t.ll.Len() >= t.max {
		old := t.ll.Back()
		t.ll.Remove(old)
		delete(t.index, old.Value.(*rttEntry).prefix)
	}
	t.index[p] = t.ll.PushFront(&rttEntry{prefix: p, srtt: ms, samples: 1})
}

// tier returns the tier of a's prefix; unknown prefixes rank in the middle
// so that one probe of an unmeasured region is not ruled out forever.
func (t *rttTable) tier(a netip.Addr) int {
	if p, ok := tierPrefix(a); ok {
		if v, ok := t.tierOf[p]; ok {
			return int(v)
		}
	}
	return len(t.centroids) / 2
}

// rtt returns the smoothed RTT of a's prefix, or 0 if unknown.
func (t *rttTable) rtt(a netip.Addr) time.Duration {
	if p, ok := tierPrefix(a); ok {
		if el, ok := t.index[p]; ok {
			return time.Duration(el.Value.(*rttEntry).srtt * float64(time.Millisecond))
		}
	}
	return 0
}

// recluster recomputes the tiers from the current samples.
func (t *rttTable) recluster() {
	vals := make([]float64, 0, t.ll.Len())
	prefixes := make([]netip.Prefix, 0, t.ll.Len())
	for el := t.ll.Front(); el != nil; el = el.Next() {
		e := el.Value.(*rttEntry)
		vals = append(vals, e.srtt)
		prefixes = append(prefixes, e.prefix)
	}
	cents, assign := KMeansTiers(vals, MaxTiers)
	t.centroids = cents
	t.tierOf = make(map[netip.Prefix]uint8, len(prefixes))
	for i, p := range prefixes {
		t.tierOf[p] = uint8(assign[i])
	}
}

// KMeansTiers clusters RTT values (milliseconds) into 1..maxTiers tiers by
// 1-D k-means. It returns the centroids in ascending order and, for each
// value, the index of its tier. The number of tiers is the smallest k whose
// clustering leaves at most 5% of the single-cluster variance (or maxTiers);
// values closer than 1 ms never split. Deterministic: it seeds centroids at
// quantiles. Pure function.
func KMeansTiers(vals []float64, maxTiers int) (centroids []float64, assign []int) {
	assign = make([]int, len(vals))
	if len(vals) == 0 {
		return nil, assign
	}
	maxTiers = clamp(maxTiers, 1, MaxTiers)
	sorted := slices.Clone(vals)
	slices.Sort(sorted)
	distinct := 1
	for i := 1; i < len(sorted); i++ {
		if sorted[i]-sorted[i-1] >= 1 {
			distinct++
		}
	}
	maxTiers = min(maxTiers, distinct)
	best, sse1 := kmeans1D(sorted, 1)
	for k := 2; k <= maxTiers && sse1 > 0; k++ {
		c, sse := kmeans1D(sorted, k)
		best = c
		if sse <= 0.05*sse1 {
			break
		}
	}
	for i, v := range vals {
		assign[i] = nearest(best, v)
	}
	return best, assign
}

// kmeans1D runs Lloyd's algorithm on sorted values with k centroids seeded at
// quantiles, returning ascending centroids and the sum of squared errors.
func kmeans1D(sorted []float64, k int) ([]float64, float64) {
	c := make([]float64, k)
	for i := range c {
		c[i] = sorted[(2*i+1)*len(sorted)/(2*k)]
	}
	sums := make([]float64, k)
	counts := make([]int, k)
	for iter := 0; iter < 50; iter++ {
		clear(sums)
		clear(counts)
		for _, v := range sorted {
			j := nearest(c, v)
			sums[j] += v
			counts[j]++
		}
		moved := false
		for j := range c {
			if counts[j] == 0 {
				continue
			}
			m := sums[j] / float64(counts[j])
			if math.Abs(m-c[j]) > 1e-9 {
				moved = true
			}
			c[j] = m
		}
		slices.Sort(c)
		if !moved {
			break
		}
	}
	c = slices.Compact(c)
	var sse float64
	for _, v := range sorted {
		d := v - c[nearest(c, v)]
		sse += d * d
	}
	return c, sse
}

func nearest(c []float64, v float64) int {
	best, bd := 0, math.Inf(1)
	for j, x := range c {
		if d := math.Abs(v - x); d < bd {
			best, bd = j, d
		}
	}
	return best
}
