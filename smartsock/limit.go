package smartsock

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
)

// limiter is a token bucket; its owner serializes calls.
type limiter struct {
	rate   float64
	tokens float64
	last   time.Time
}

func newLimiter(perSecond int) limiter {
	return limiter{rate: float64(perSecond), tokens: float64(perSecond), last: time.Now()}
}

func (l *limiter) allow(now time.Time) bool {
	l.tokens = min(l.rate, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// srcBuckets is the size of a srcLimiter's table. A flood from one source
// empties one bucket; it empties a real peer's only if the two hash to the
// same bucket (1 in 2048, unpredictable: the seed is random per Conn).
const srcBuckets = 2048

// srcLimiter is a token bucket per source in a fixed table of hashed
// buckets: its memory is the same whatever the number of sources, so a
// sender with many addresses can make it no bigger, only share buckets.
// Its owner serializes calls.
type srcLimiter struct {
	seed  maphash.Seed
	rate  float64 // tokens per second, and the burst
	b     [srcBuckets]srcBucket
	epoch int64 // unix ns the buckets' times count from
}

type srcBucket struct {
	tokens float32
	last   int32 // ms since epoch; 0: never used (full)
}

func newSrcLimiter(perSecond int, now time.Time) *srcLimiter {
	return &srcLimiter{seed: maphash.MakeSeed(), rate: float64(perSecond), epoch: now.UnixNano() - int64(time.Millisecond)}
}

// srcKey identifies a source: its address, the relay session a frame came
// in (zero when direct), and the identity it claims (zero when none).
type srcKey struct {
	addr    netip.AddrPort
	session [16]byte
	id      pki.Identity
}

func (l *srcLimiter) bucket(k *srcKey) *srcBucket {
	var buf [16 + 2 + 16 + pki.IdentitySize]byte
	a := k.addr.Addr().As16()
	copy(buf[:16], a[:])
	binary.BigEndian.PutUint16(buf[16:18], k.addr.Port())
	copy(buf[18:34], k.session[:])
	copy(buf[34:], k.id[:])
	return &l.b[maphash.Bytes(l.seed, buf[:])%srcBuckets]
}

// allow takes a token from k's bucket.
func (l *srcLimiter) allow(k *srcKey, now time.Time) bool {
	b := l.bucket(k)
	ms := (now.UnixNano() - l.epoch) / int64(time.Millisecond)
	if ms > 1<<31-1 || ms < 0 {
		// After 24 days, start over: every bucket full again.
		l.epoch = now.UnixNano() - int64(time.Millisecond)
		l.b = [srcBuckets]srcBucket{}
		ms = 1
	}
	t := l.rate
	if b.last != 0 {
		t = min(l.rate, float64(b.tokens)+float64(max(ms-int64(b.last), 0))/1000*l.rate)
	}
	b.last = int32(ms)
	if t < 1 {
		b.tokens = float32(t)
		return false
	}
	b.tokens = float32(t - 1)
	return true
}
