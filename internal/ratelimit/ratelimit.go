// Package ratelimit is the project's one token bucket: smartsock's probe,
// hello and reset budgets, its per-source tables, gossipsub's per-peer
// receive budget and the relay server's per-session byte rate all count
// with it. Tokens are events or bytes alike (AllowN takes the cost).
//
// Arithmetic is integer and exact: a bucket refilled in many small steps
// ends up with exactly the tokens one long step would give it, and rates up
// to 2^63 tokens per period neither overflow nor lose precision (the
// products are 128-bit). Nothing allocates. Time comes from the caller, so
// tests drive it with their own clock.
//
// A Bucket is not safe for concurrent use: its owner serializes calls (one
// goroutine, or a lock that owner holds). That keeps the hot path free of
// atomics where one goroutine owns the budget anyway, which is how every
// user here runs it.
//
// ratelimit imports only the standard library.
package ratelimit

import (
	"hash/maphash"
	"math"
	"math/bits"
	"time"
)

// Rate is N tokens per Per, with room for Burst tokens. A bucket starts
// full. N 0 never refills; Per <= 0 or Burst <= 0 allows nothing.
type Rate struct {
	N     int64
	Per   time.Duration
	Burst int64
}

// PerSecond is n tokens a second with a burst of one second's worth, the
// shape most budgets here have.
func PerSecond(n int64) Rate { return Rate{N: n, Per: time.Second, Burst: n} }

// PerSecondFloat is rate tokens a second (fractions count, to a
// thousandth of a token) with room for burst tokens.
func PerSecondFloat(rate float64, burst int64) Rate {
	if rate <= 0 || math.IsNaN(rate) {
		return Rate{N: 0, Per: time.Second, Burst: burst}
	}
	if rate >= math.MaxInt64/1000 {
		return Rate{N: math.MaxInt64, Per: time.Second, Burst: burst}
	}
	return Rate{N: int64(math.Round(rate * 1000)), Per: 1000 * time.Second, Burst: burst}
}

// Bucket is one bucket's state under a Rate, which its owner keeps apart
// (so a table of buckets sharing one Rate stays small). The zero value is
// a full bucket.
type Bucket struct {
	tokens int64  // spent tokens are subtracted; valid once last != 0
	last   int64  // unix ns of the last refill; 0: never used (full)
	frac   uint64 // what the time since made of the next token, in 1/Per tokens
}

// Take spends n tokens of b if it holds them, after refilling it for the
// time since its last refill. It reports whether they were spent. A cost
// above r.Burst never passes.
func (r Rate) Take(b *Bucket, now time.Time, n int64) bool {
	ns := now.UnixNano()
	if r.Per <= 0 || r.Burst <= 0 || n < 0 {
		return false
	}
	switch el := ns - b.last; {
	case b.last == 0:
		b.tokens, b.last, b.frac = r.Burst, ns, 0
	case el <= 0: // the same instant, or a clock that stepped back
	case b.tokens >= r.Burst || r.N <= 0:
		b.last = ns // time while full (or never refilling) earns nothing
	default:
		// Refill (el*N + frac)/Per tokens, exactly: the products are
		// 128-bit, and what made no whole token is kept in frac.
		hi, lo := bits.Mul64(uint64(el), uint64(r.N))
		var carry uint64
		lo, carry = bits.Add64(lo, b.frac, 0)
		hi += carry
		mhi, mlo := bits.Mul64(uint64(r.Burst-b.tokens), uint64(r.Per))
		if hi > mhi || (hi == mhi && lo >= mlo) {
			b.tokens, b.frac = r.Burst, 0
		} else {
			// The sum is below missing*Per < 2^63*Per: the quotient
			// fits, and hi < Per as Div64 requires.
			add, rem := bits.Div64(hi, lo, uint64(r.Per))
			b.tokens += int64(add)
			b.frac = rem
		}
		b.last = ns
	}
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// Limiter is a Bucket with its Rate. The zero value allows nothing; make
// one with New.
type Limiter struct {
	rate Rate
	b    Bucket
}

// New returns a full bucket of rate r.
func New(r Rate) Limiter { return Limiter{rate: r} }

// Allow spends one token.
func (l *Limiter) Allow(now time.Time) bool { return l.rate.Take(&l.b, now, 1) }

// AllowN spends n tokens (bytes, say) if the bucket holds them.
func (l *Limiter) AllowN(now time.Time, n int64) bool { return l.rate.Take(&l.b, now, n) }

// Keyed is a bucket per key in a fixed table of hashed buckets: its memory
// is the same whatever the number of keys, so a sender with many sources
// can make it no bigger, only share buckets with itself and, unpredictably
// (the hash seed is random per table), with one honest key in
// len(table) of them. Its owner serializes calls.
type Keyed struct {
	rate Rate
	seed maphash.Seed
	b    []Bucket
}

// NewKeyed returns a table of n buckets of rate r.
func NewKeyed(r Rate, n int) *Keyed {
	return &Keyed{rate: r, seed: maphash.MakeSeed(), b: make([]Bucket, max(n, 1))}
}

// Allow spends one token of key's bucket.
func (k *Keyed) Allow(key []byte, now time.Time) bool {
	return k.rate.Take(&k.b[maphash.Bytes(k.seed, key)%uint64(len(k.b))], now, 1)
}
