package ratelimit

import (
	"encoding/binary"
	"go/build"
	"math"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_750_000_000, 0)

// TestSmallStepsAddUp: a bucket refilled every millisecond gets exactly
// what one refill after the whole time gives it, at rates where a token
// takes several steps to earn and where a step earns several.
func TestSmallStepsAddUp(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		per  time.Duration
		step time.Duration
	}{
		{1000, time.Second, time.Millisecond},        // one token a step
		{300, time.Second, time.Millisecond},         // a token every 3.33 steps
		{7, time.Second, 13 * time.Millisecond},      // a token every ~11 steps
		{125_000_000, time.Second, time.Microsecond}, // 125 tokens a step
	} {
		r := Rate{N: tc.n, Per: tc.per, Burst: 1 << 40}
		var stepped, once Bucket
		r.Take(&stepped, t0, r.Burst) // empty both
		r.Take(&once, t0, r.Burst)
		now := t0
		for range 500 {
			now = now.Add(tc.step)
			r.Take(&stepped, now, 0)
		}
		r.Take(&once, now, 0)
		want := int64(500 * tc.step * time.Duration(tc.n) / tc.per)
		if stepped.tokens != once.tokens || once.tokens != want {
			t.Errorf("%d per %v in %v steps: stepped %d, once %d, want %d", tc.n, tc.per, tc.step, stepped.tokens, once.tokens, want)
		}
	}
}

// TestBurstAndCost: a full bucket passes its burst and no more, a pause
// refills it only up to the burst, and a cost above the burst never passes.
func TestBurstAndCost(t *testing.T) {
	l := New(PerSecond(1000))
	if !l.AllowN(t0, 1000) || l.AllowN(t0, 1) {
		t.Fatal("burst of a full bucket")
	}
	if !l.AllowN(t0.Add(100*time.Millisecond), 100) || l.AllowN(t0.Add(100*time.Millisecond), 1) {
		t.Fatal("100 ms did not give exactly 100 tokens")
	}
	later := t0.Add(time.Hour)
	if !l.AllowN(later, 1000) || l.Allow(later) {
		t.Fatal("a long pause filled the bucket past its burst")
	}
	if l.AllowN(later.Add(time.Hour), 1001) {
		t.Fatal("a cost above the burst passed")
	}
	if l.AllowN(later.Add(time.Hour), -1) {
		t.Fatal("a negative cost passed")
	}
	var zero Limiter
	if zero.Allow(t0) {
		t.Fatal("the zero Limiter allowed something")
	}
}

// TestHugeRates: rates near 2^63 neither overflow nor stall.
func TestHugeRates(t *testing.T) {
	for _, n := range []int64{1 << 62, math.MaxInt64} {
		l := New(Rate{N: n, Per: time.Second, Burst: n})
		for i := range 5 {
			now := t0.Add(time.Duration(i) * 999 * time.Millisecond)
			if !l.AllowN(now, n/2) {
				t.Fatalf("rate %d: step %d refused", n, i)
			}
		}
		if !l.AllowN(t0.Add(time.Hour), n) {
			t.Fatalf("rate %d: not full after an hour", n)
		}
	}
}

// TestFractionalRate: half a token a second is one token every 2 s.
func TestFractionalRate(t *testing.T) {
	l := New(PerSecondFloat(0.5, 1))
	if !l.Allow(t0) || l.Allow(t0.Add(1999*time.Millisecond)) || !l.Allow(t0.Add(2*time.Second)) {
		t.Fatal("0.5/s is not one token per 2 s")
	}
	if l := New(PerSecondFloat(1e9, 1<<20)); !l.AllowN(t0, 1<<20) {
		t.Fatal("a large float rate")
	}
	if l := New(PerSecondFloat(0, 3)); !l.AllowN(t0, 3) || l.Allow(t0.Add(time.Hour)) {
		t.Fatal("rate 0: the burst, then nothing")
	}
}

// TestClockBackwards: a clock that steps back earns nothing and breaks
// nothing.
func TestClockBackwards(t *testing.T) {
	l := New(PerSecond(10))
	l.AllowN(t0, 10)
	if l.Allow(t0.Add(-time.Hour)) {
		t.Fatal("a clock step back refilled the bucket")
	}
	if !l.Allow(t0.Add(100 * time.Millisecond)) {
		t.Fatal("the bucket did not refill after the clock came back")
	}
}

// TestKeyedFloodSpendsItsOwnBucket: a key flooding gets its rate (and one
// second's burst), the other keys keep their full budget, and the flooder
// is refilled after a pause.
func TestKeyedFloodSpendsItsOwnBucket(t *testing.T) {
	k := NewKeyed(PerSecond(100), 2048)
	key := func(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }
	flooder := key(1 << 30)
	allowed := 0
	for i := range 20000 { // 20,000 in one second
		if k.Allow(flooder, t0.Add(time.Duration(i)*50*time.Microsecond)) {
			allowed++
		}
	}
	if allowed < 199 || allowed > 200 {
		t.Fatalf("a flooder got %d of 20,000 in 1 s, want the burst (100) plus the rate (100)", allowed)
	}
	now := t0.Add(time.Second)
	others := 0
	for i := range 1000 {
		for range 10 {
			if k.Allow(key(i), now) {
				others++
			}
		}
	}
	if others < 9900 { // all but those sharing the flooder's bucket
		t.Fatalf("other keys got %d of 10,000 after the flood", others)
	}
	if !k.Allow(flooder, now.Add(time.Second)) {
		t.Fatal("the flooder was not refilled after a pause")
	}
}

func TestNoAllocations(t *testing.T) {
	l := New(PerSecond(100))
	k := NewKeyed(PerSecond(100), 64)
	var key [34]byte
	now := t0
	if a := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond)
		l.Allow(now)
		k.Allow(key[:], now)
	}); a != 0 {
		t.Fatalf("%v allocations per check", a)
	}
}

// TestImports: a leaf, standard library only.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.Contains(strings.Split(imp, "/")[0], ".") {
			t.Errorf("ratelimit imports %s", imp)
		}
	}
}

func BenchmarkAllow(b *testing.B) {
	l := New(PerSecond(1 << 40))
	now := t0
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.AllowN(now, 1200)
	}
}
