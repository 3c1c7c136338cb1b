package dht

import "time"

// LookupBuckets are the upper bounds, in seconds, of the lookup latency
// histogram: from a LAN round trip to LookupTimeout's order.
var LookupBuckets = [...]float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Histogram is a latency histogram, not cumulative: Counts[i] counts
// observations <= Bounds[i] and above the bound before; the last count is
// those above every bound.
type Histogram struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"` // len(Bounds)+1
	Sum    float64   `json:"sum"`    // seconds
	Count  uint64    `json:"count"`
}

// histogram is Histogram's fixed-size form inside counters (guarded by
// DHT.mu, like them).
type histogram struct {
	counts [len(LookupBuckets) + 1]uint64
	sum    float64
	count  uint64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(LookupBuckets) && s > LookupBuckets[i] {
		i++
	}
	h.counts[i]++
	h.sum += s
	h.count++
}

func (h *histogram) snapshot() Histogram {
	return Histogram{Bounds: LookupBuckets[:], Counts: append([]uint64(nil), h.counts[:]...), Sum: h.sum, Count: h.count}
}

// observeLookup records one lookup's latency.
func (d *DHT) observeLookup(dur time.Duration) {
	d.mu.Lock()
	d.stats.lookupLatency.observe(dur)
	d.mu.Unlock()
}
