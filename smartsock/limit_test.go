package smartsock

import (
	"net/netip"
	"testing"
	"time"

	"github.com/korium/korium-tun/internal/ratelimit"
	"github.com/korium/korium-tun/pki"
)

// TestSrcLimiter: a source gets its rate (and one second's burst), a flood
// from it leaves other sources (other addresses claiming other identities)
// their full budget, and after a pause it is refilled.
func TestSrcLimiter(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := ratelimit.NewKeyed(ratelimit.PerSecond(100), srcBuckets)
	var kb [srcKeySize]byte
	flooder := appendSrcKey(kb[:0], netip.MustParseAddrPort("198.18.0.9:9"), nil, nil)
	allowed := 0
	for i := 0; i < 20000; i++ { // 20,000 in one second
		if l.Allow(flooder, now.Add(time.Duration(i)*50*time.Microsecond)) {
			allowed++
		}
	}
	if allowed < 150 || allowed > 210 {
		t.Fatalf("a flooder got %d of 20,000 in 1 s, want the burst (100) plus the rate (100)", allowed)
	}
	now = now.Add(time.Second)
	others := 0
	for i := 0; i < 1000; i++ {
		id := pki.Identity{byte(i)}
		var b [srcKeySize]byte
		k := appendSrcKey(b[:0], netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 7400), nil, &id)
		for j := 0; j < 10; j++ {
			if l.Allow(k, now) {
				others++
			}
		}
	}
	// 1,000 other sources, 10 each, in a table of srcBuckets: all but
	// those sharing the flooder's bucket get through.
	if others < 9900 {
		t.Fatalf("other sources got %d of 10,000 after the flood", others)
	}
	if !l.Allow(flooder, now.Add(time.Second)) {
		t.Fatal("the flooder was not refilled after a pause")
	}
	// A clock that jumps far ahead never overflows.
	if !l.Allow(flooder, now.Add(30*24*time.Hour)) {
		t.Fatal("a clock jump broke the limiter")
	}
}

// TestSrcLimiterAllocs: the per-packet check allocates nothing.
func TestSrcLimiterAllocs(t *testing.T) {
	now := time.Now()
	l := ratelimit.NewKeyed(ratelimit.PerSecond(100), srcBuckets)
	a := netip.MustParseAddrPort("[2001:db8::1]:9")
	s := [16]byte{1}
	id := pki.Identity{2}
	if n := testing.AllocsPerRun(1000, func() {
		var k [srcKeySize]byte
		l.Allow(appendSrcKey(k[:0], a, &s, &id), now)
	}); n != 0 {
		t.Fatalf("%v allocations per check", n)
	}
}
