package dht

// Adaptive k and alpha. Both are pure functions of what the DHT observed in
// the last adaptation window, so they are table-tested and the loop that
// calls them holds all the state.

// TargetK maps the observed churn (the fraction of routing-table contacts
// found dead during the last adaptation window, 0..1) and congestion to the
// bucket size, which is also the replication factor of records. A quiet
// network keeps DefaultK; churn raises it linearly to MaxK at 2% per window
// (with 30 s windows, a network replacing a third of its nodes in ten
// minutes), because dead contacts then eat into every bucket and replica
// set. Only a congested node shrinks to MinK, shedding the upkeep of large
// buckets; a quiet one keeps 20 because more replicas also mean a nearer
// one (the simulation shows median latency doubling at k=10).
func TargetK(churn float64, congested bool) int {
	const full = 0.02
	switch {
	case congested:
		return MinK
	case !(churn > 0): // also NaN
		return DefaultK
	case churn >= full:
		return MaxK
	}
	return DefaultK + int(churn*float64(MaxK-DefaultK)/full+0.5)
}

// NextK moves k toward TargetK by at most 2 per window, so one noisy window
// cannot swing the table, or by 4 when growing toward MaxK under severe
// churn.
func NextK(cur int, churn float64, congested bool) int {
	cur = clamp(cur, MinK, MaxK)
	t := TargetK(churn, congested)
	step := 2
	if t >= MaxK {
		step = 4
	}
	switch {
	case t > cur:
		return min(cur+step, t)
	case t < cur:
		return max(cur-2, t)
	}
	return cur
}

// NextAlpha returns the lookup parallelism for the next window from the
// fraction of requests that timed out (timeoutRate, 0..1) and whether the
// node is congested (more requests in flight than its budget). Congestion
// wins: it sheds load down to MinAlpha. Otherwise many timeouts mean dead or
// lossy contacts, and more parallel queries hide them (up to MaxAlpha);
// a clean window drifts back toward DefaultAlpha. One step per window.
func NextAlpha(cur int, timeoutRate float64, congested bool) int {
	cur = clamp(cur, MinAlpha, MaxAlpha)
	target := DefaultAlpha
	switch {
	case congested:
		target = MinAlpha
	case timeoutRate >= 0.25:
		target = MaxAlpha
	case timeoutRate >= 0.10:
		target = DefaultAlpha + 1
	}
	switch {
	case target > cur:
		return cur + 1
	case target < cur:
		return cur - 1
	}
	return cur
}

func clamp(v, lo, hi int) int { return max(lo, min(hi, v)) }
