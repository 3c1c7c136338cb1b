package dht

// Adaptive k and alpha. Both are pure functions of what the DHT observed in
// the last adaptation window, so they are table-tested and the loop that
// calls them holds all the state.

// TargetK maps the observed churn (the fraction of routing-table contacts
// found dead during the last adaptation window, 0..1) to the bucket size
// that keeps lookups and replicas safe: MinK for a quiet network, DefaultK at
// 1% per window, MaxK at 2% or more (with 30 s windows that is a network
// replacing a third of its nodes in ten minutes).
func TargetK(churn float64) int {
	const full = 0.02
	switch {
	case !(churn > 0): // also NaN
		return MinK
	case churn >= full:
		return MaxK
	}
	return MinK + int(churn*float64(MaxK-MinK)/full+0.5)
}

// NextK moves k toward TargetK(churn) by at most 2 per window: a single
// noisy window cannot halve the table, and a churn spike is met within a few
// windows. Growing is immediate up to 4 steps when churn is severe.
func NextK(cur int, churn float64) int {
	cur = clamp(cur, MinK, MaxK)
	t := TargetK(churn)
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
