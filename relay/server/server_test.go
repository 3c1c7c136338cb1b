package server

import (
	"bytes"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// sent is one datagram the fake socket was asked to send.
type sent struct {
	frame []byte
	dst   netip.AddrPort
}

// fakeSender records every datagram, copying the frame as a socket would.
type fakeSender struct {
	mu   sync.Mutex
	out  []sent
	fail bool
}

func (f *fakeSender) SendRelay(frame []byte, dst netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("send failed")
	}
	f.out = append(f.out, sent{bytes.Clone(frame), dst})
	return nil
}

func (f *fakeSender) take() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.out
	f.out = nil
	return out
}

// nopSender discards, for allocation checks and benchmarks.
type nopSender struct{}

func (nopSender) SendRelay([]byte, netip.AddrPort) error { return nil }

var t0 = time.Unix(1_700_000_000, 0)

func ident(n int) pki.Identity {
	var id pki.Identity
	id[0], id[1], id[31] = byte(n>>8), byte(n), 1
	return id
}

func addr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// ipAddr returns a distinct address for n, on 10.x.y.z.
func ipAddr(n int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), 4433)
}

func frame(id [16]byte, payload string) []byte {
	return append(wire.AppendRelayHeader(nil, wire.RelayHeader{Session: id}), payload...)
}

var (
	idA, idB   = ident(1), ident(2)
	addrA      = addr("198.51.100.1:1000")
	addrB      = addr("[2001:db8::2]:2000")
	addrSpoofy = addr("203.0.113.66:1000")
)

func open(t *testing.T, s *Server) [16]byte {
	t.Helper()
	id, err := s.Open(idA, idB, addrA, addrB, t0)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return id
}

func TestForwardBothWays(t *testing.T) {
	fs := &fakeSender{}
	s := New(Config{}, fs)
	id := open(t, s)

	ab := frame(id, "quic from A")
	if !s.Forward(ab, addrA, t0) {
		t.Fatal("Forward(A->B) = false")
	}
	ba := frame(id, "quic from B \x00\xff")
	if !s.Forward(ba, addrB, t0) {
		t.Fatal("Forward(B->A) = false")
	}
	// A dual-stack socket reports IPv4 peers in IPv4-mapped form.
	mappedA := netip.AddrPortFrom(netip.AddrFrom16(addrA.Addr().As16()), addrA.Port())
	if !s.Forward(ab, mappedA, t0) {
		t.Fatal("Forward(mapped A) = false")
	}
	got := fs.take()
	want := []sent{{ab, addrB}, {ba, addrA}, {ab, addrB}}
	if len(got) != len(want) {
		t.Fatalf("sent %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].frame, want[i].frame) || got[i].dst != want[i].dst {
			t.Errorf("frame %d: sent %q to %v, want %q to %v", i, got[i].frame, got[i].dst, want[i].frame, want[i].dst)
		}
	}
	st := s.Stats()
	if st.ForwardedFrames != 3 || st.ForwardedBytes != uint64(2*len(ab)+len(ba)) {
		t.Errorf("stats %+v", st)
	}
}

func TestForwardNotOurs(t *testing.T) {
	fs := &fakeSender{}
	s := New(Config{}, fs)
	id := open(t, s)
	other := id
	other[0] ^= 1
	for name, b := range map[string][]byte{
		"empty":           nil,
		"QUIC":            []byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20},
		"short CRLY":      frame(id, "")[:19],
		"unknown session": frame(other, "x"),
	} {
		if s.Forward(b, addrA, t0) {
			t.Errorf("%s: Forward = true, want false", name)
		}
	}
	if got := fs.take(); len(got) != 0 {
		t.Errorf("sent %d frames", len(got))
	}
	if st := s.Stats(); st.Unknown != 1 {
		t.Errorf("Unknown = %d, want 1", st.Unknown)
	}
}

func TestSpoofedSourceDropped(t *testing.T) {
	fs := &fakeSender{}
	s := New(Config{}, fs)
	id := open(t, s)
	for _, src := range []netip.AddrPort{
		addrSpoofy,
		addr("198.51.100.1:1001"), // A's IP, another port
		addr("198.51.100.2:1000"), // A's port, another IP
		{},
	} {
		if !s.Forward(frame(id, "spoof"), src, t0) {
			t.Errorf("Forward from %v = false, want true (handled: dropped)", src)
		}
	}
	if got := fs.take(); len(got) != 0 {
		t.Fatalf("spoofed frames were sent: %v", got)
	}
	st := s.Stats()
	if st.DropWrongSource != 4 || st.ForwardedFrames != 0 {
		t.Errorf("stats %+v", st)
	}
	// Spoofed frames do not keep a session alive.
	if n := s.Expire(t0.Add(DefaultIdleTimeout)); n != 1 {
		t.Errorf("Expire = %d, want 1", n)
	}
}

func TestOpenRefusals(t *testing.T) {
	s := New(Config{}, nopSender{})
	for _, tc := range []struct {
		name         string
		req, tgt     pki.Identity
		reqAd, tgtAd netip.AddrPort
		want         error
	}{
		{"self", idA, idA, addrA, addrB, ErrSelf},
		{"zero target", idA, pki.Identity{}, addrA, addrB, ErrSelf},
		{"zero requester", pki.Identity{}, idB, addrA, addrB, ErrSelf},
		{"invalid requester addr", idA, idB, netip.AddrPort{}, addrB, ErrAddr},
		{"port 0", idA, idB, addrA, addr("1.2.3.4:0"), ErrAddr},
		{"unspecified", idA, idB, addr("0.0.0.0:5"), addrB, ErrAddr},
		{"same address", idA, idB, addrA, addrA, ErrAddr},
	} {
		if _, err := s.Open(tc.req, tc.tgt, tc.reqAd, tc.tgtAd, t0); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	st := s.Stats()
	if st.RefusedSelf != 3 || st.RefusedAddr != 4 || st.Sessions != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestSessionLimit(t *testing.T) {
	s := New(Config{}, nopSender{})
	for i := range DefaultMaxSessions {
		// Distinct IPs so that only the global limit applies.
		if _, err := s.Open(ident(2*i+10), ident(2*i+11), ipAddr(2*i), ipAddr(2*i+1), t0); err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
	}
	n := DefaultMaxSessions
	if _, err := s.Open(ident(2*n+10), ident(2*n+11), ipAddr(2*n), ipAddr(2*n+1), t0); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("session %d: err = %v, want ErrTooManySessions", n+1, err)
	}
	// Replacing an existing pair is still allowed at the limit.
	if _, err := s.Open(ident(11), ident(10), ipAddr(1), ipAddr(0), t0); err != nil {
		t.Fatalf("replacement at the limit: %v", err)
	}
	st := s.Stats()
	if st.Sessions != DefaultMaxSessions || st.RefusedSessions != 1 || st.Replaced != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestPerIPLimit(t *testing.T) {
	s := New(Config{}, nopSender{})
	reqAddr := addr("192.0.2.1:5000")
	for i := range DefaultMaxPerIP {
		// Other ports of the same IP count too.
		ra := netip.AddrPortFrom(reqAddr.Addr(), uint16(5000+i))
		if _, err := s.Open(ident(1000+i), ident(2000+i), ra, ipAddr(i), t0); err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
	}
	if _, err := s.Open(ident(999), ident(1999), reqAddr, ipAddr(999), t0); !errors.Is(err, ErrTooManyPerIP) {
		t.Fatalf("51st: err = %v, want ErrTooManyPerIP", err)
	}
	// The limit counts requesters: this IP may still be a target.
	if _, err := s.Open(ident(3000), ident(3001), addr("192.0.2.2:1"), reqAddr, t0); err != nil {
		t.Fatalf("as target: %v", err)
	}
	// Another IP still works, and a closed session frees a slot.
	if _, err := s.Open(ident(999), ident(1999), addr("192.0.2.3:5000"), ipAddr(999), t0); err != nil {
		t.Fatalf("other IP: %v", err)
	}
	s.mu.RLock()
	var first [16]byte
	for sid, ss := range s.sessions {
		if ss.a == ident(1000) {
			first = sid
		}
	}
	s.mu.RUnlock()
	s.CloseSession(first)
	if _, err := s.Open(ident(4000), ident(4001), reqAddr, ipAddr(4000), t0); err != nil {
		t.Fatalf("after close: %v", err)
	}
	if st := s.Stats(); st.RefusedPerIP != 1 || st.Closed != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestReplaceSamePair(t *testing.T) {
	fs := &fakeSender{}
	s := New(Config{}, fs)
	old := open(t, s)
	// B asks for a session to A: same pair, other direction.
	newAddrB := addr("[2001:db8::2]:2001")
	id, err := s.Open(idB, idA, newAddrB, addrA, t0)
	if err != nil || id == old {
		t.Fatalf("Open again: %x, %v", id, err)
	}
	if s.Forward(frame(old, "x"), addrA, t0) {
		t.Error("old session still forwards")
	}
	if !s.Forward(frame(id, "y"), addrA, t0) {
		t.Error("new session does not forward")
	}
	if got := fs.take(); len(got) != 1 || got[0].dst != newAddrB {
		t.Errorf("sent %v, want one frame to %v", got, newAddrB)
	}
	s.mu.RLock()
	nIP := len(s.perIP)
	s.mu.RUnlock()
	if st := s.Stats(); st.Sessions != 1 || st.Replaced != 1 || nIP != 1 {
		t.Errorf("stats %+v, %d IPs counted", st, nIP)
	}
}

func TestIdleExpiry(t *testing.T) {
	s := New(Config{IdleTimeout: time.Minute}, nopSender{})
	id := open(t, s)
	if n := s.Expire(t0.Add(59 * time.Second)); n != 0 {
		t.Fatalf("Expire before timeout = %d", n)
	}
	// A forwarded frame keeps it alive.
	if !s.Forward(frame(id, "k"), addrB, t0.Add(30*time.Second)) {
		t.Fatal("Forward = false")
	}
	if n := s.Expire(t0.Add(89 * time.Second)); n != 0 {
		t.Fatalf("Expire after traffic = %d", n)
	}
	if n := s.Expire(t0.Add(90 * time.Second)); n != 1 {
		t.Fatalf("Expire at idle timeout = %d, want 1", n)
	}
	if s.Forward(frame(id, "late"), addrA, t0.Add(91*time.Second)) {
		t.Error("expired session still forwards")
	}
	if st := s.Stats(); st.Sessions != 0 || st.Expired != 1 {
		t.Errorf("stats %+v", st)
	}
	// Its slots are free again.
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.perIP) != 0 || len(s.pairs) != 0 {
		t.Errorf("leftover perIP %v pairs %d", s.perIP, len(s.pairs))
	}
}

func TestByteCap(t *testing.T) {
	fs := &fakeSender{}
	f := frame([16]byte{}, "0123456789") // 30 bytes
	s := New(Config{MaxBytes: uint64(3 * len(f))}, fs)
	id := open(t, s)
	f = frame(id, "0123456789")
	for i := range 3 {
		if !s.Forward(f, addrA, t0) {
			t.Fatalf("frame %d: Forward = false", i)
		}
	}
	if !s.Forward(f, addrB, t0) {
		t.Fatal("frame over the cap: Forward = false, want true (dropped)")
	}
	if got := fs.take(); len(got) != 3 {
		t.Fatalf("sent %d frames, want 3", len(got))
	}
	st := s.Stats()
	if st.DropBytes != 1 || st.Sessions != 0 || st.ForwardedBytes != uint64(3*len(f)) {
		t.Errorf("stats %+v", st)
	}
	if s.Forward(f, addrA, t0) {
		t.Error("closed session still handled")
	}
}

func TestRateCap(t *testing.T) {
	fs := &fakeSender{}
	const rate = 1000
	s := New(Config{Rate: rate}, fs)
	id := open(t, s)
	f := frame(id, string(make([]byte, 80))) // 100 bytes
	// The bucket starts full: one second's worth passes, then nothing.
	for i := range 10 {
		if !s.Forward(f, addrA, t0) {
			t.Fatalf("frame %d: false", i)
		}
	}
	if len(fs.take()) != 10 {
		t.Fatal("burst not forwarded")
	}
	if !s.Forward(f, addrA, t0) || len(fs.take()) != 0 {
		t.Fatal("frame over the rate was forwarded")
	}
	// 100 ms later, 100 bytes' worth are back; refills in 1 ms steps
	// (one token each) must not be lost.
	now := t0
	for range 99 {
		now = now.Add(time.Millisecond)
		s.Forward(f, addrB, now)
	}
	if len(fs.take()) != 0 {
		t.Fatal("forwarded before 100 ms")
	}
	now = now.Add(time.Millisecond)
	if !s.Forward(f, addrB, now) || len(fs.take()) != 1 {
		t.Fatal("not forwarded after 100 ms of refill")
	}
	// A long pause refills only up to the burst.
	now = now.Add(time.Hour)
	for range 11 {
		s.Forward(f, addrA, now)
	}
	if n := len(fs.take()); n != 10 {
		t.Errorf("after a long pause %d frames passed, want 10", n)
	}
	if st := s.Stats(); st.DropRate != 1+99+1 || st.ForwardedFrames != 21 {
		t.Errorf("stats %+v", st)
	}
}

func TestRateHugeNoOverflow(t *testing.T) {
	s := New(Config{Rate: 1 << 62}, nopSender{})
	id := open(t, s)
	f := frame(id, "x")
	for i := range 3 {
		if !s.Forward(f, addrA, t0.Add(time.Duration(i)*999*time.Millisecond)) {
			t.Fatal("false")
		}
	}
	if st := s.Stats(); st.ForwardedFrames != 3 || st.DropRate != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestUpdateAddr(t *testing.T) {
	fs := &fakeSender{}
	s := New(Config{}, fs)
	id := open(t, s)
	idC := ident(3)
	addrC := addr("192.0.2.9:9")
	id2, err := s.Open(idC, idA, addrC, addrA, t0)
	if err != nil {
		t.Fatal(err)
	}
	rebound := addr("198.51.100.1:31337")
	s.UpdateAddr(idA, rebound)
	// The old address is no longer an endpoint of either session.
	s.Forward(frame(id, "old"), addrA, t0)
	s.Forward(frame(id2, "old"), addrA, t0)
	if got := fs.take(); len(got) != 0 {
		t.Fatalf("frames from A's old address were sent: %v", got)
	}
	s.Forward(frame(id, "to B"), rebound, t0)
	s.Forward(frame(id2, "to C"), rebound, t0)
	s.Forward(frame(id, "to A"), addrB, t0)
	got := fs.take()
	want := []netip.AddrPort{addrB, addrC, rebound}
	if len(got) != len(want) {
		t.Fatalf("sent %v", got)
	}
	for i := range want {
		if got[i].dst != want[i] {
			t.Errorf("frame %d to %v, want %v", i, got[i].dst, want[i])
		}
	}
	// An invalid address, or B's address, is ignored.
	s.UpdateAddr(idA, netip.AddrPort{})
	s.UpdateAddr(idA, addrB)
	s.Forward(frame(id, "still"), rebound, t0)
	if got := fs.take(); len(got) != 1 || got[0].dst != addrB {
		t.Errorf("after ignored updates: %v", got)
	}
}

func TestSendFailureCounted(t *testing.T) {
	fs := &fakeSender{fail: true}
	s := New(Config{}, fs)
	id := open(t, s)
	if !s.Forward(frame(id, "x"), addrA, t0) {
		t.Fatal("false")
	}
	if st := s.Stats(); st.DropSend != 1 || st.ForwardedFrames != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestConfig(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
	if got := (Config{}).withDefaults(); got != DefaultConfig() {
		t.Errorf("defaults %+v", got)
	}
	for _, c := range []Config{{MaxSessions: -1}, {MaxPerIP: -1}, {IdleTimeout: -1}, {Rate: -1}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

func TestForwardAllocs(t *testing.T) {
	s := New(Config{}, nopSender{})
	id := open(t, s)
	f := frame(id, string(make([]byte, 1200)))
	other := frame([16]byte{1}, "x")
	now := t0
	n := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Microsecond)
		s.Forward(f, addrA, now)
		s.Forward(f, addrB, now)
		s.Forward(f, addrSpoofy, now)
		s.Forward(other, addrA, now)
	})
	if n != 0 {
		t.Errorf("Forward: %v allocs per run, want 0", n)
	}
	if st := s.Stats(); st.ForwardedFrames < 2000 {
		t.Errorf("only %d frames forwarded", st.ForwardedFrames)
	}
}

// TestConcurrent runs Forward on several goroutines while others open,
// update, close and expire sessions; run it with -race.
func TestConcurrent(t *testing.T) {
	s := New(Config{MaxSessions: 64, MaxPerIP: 64}, nopSender{})
	const pairs = 16
	ids := make([][16]byte, pairs)
	for i := range ids {
		id, err := s.Open(ident(2*i+10), ident(2*i+11), ipAddr(2*i), ipAddr(2*i+1), t0)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 5000 {
				p := (i + g) % pairs
				s.Forward(frame(ids[p], "payload"), ipAddr(2*p+i%2), t0.Add(time.Duration(i)*time.Millisecond))
			}
		})
	}
	wg.Go(func() {
		for i := range 2000 {
			p := i % pairs
			id, err := s.Open(ident(2*p+10), ident(2*p+11), ipAddr(2*p), ipAddr(2*p+1), t0.Add(time.Duration(i)*time.Millisecond))
			if err != nil {
				t.Error(err)
				return
			}
			if i%7 == 0 {
				s.CloseSession(id)
			}
			s.UpdateAddr(ident(2*p+10), ipAddr(2*p))
		}
	})
	wg.Go(func() {
		for i := range 200 {
			s.Expire(t0.Add(time.Duration(i) * time.Second))
			_ = s.Stats()
		}
	})
	wg.Wait()
	st := s.Stats()
	if st.Sessions > pairs {
		t.Errorf("%d sessions for %d pairs", st.Sessions, pairs)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.pairs) != len(s.sessions) {
		t.Errorf("pairs %d != sessions %d", len(s.pairs), len(s.sessions))
	}
	total := 0
	for _, n := range s.perIP {
		total += n
	}
	if total != len(s.sessions) {
		t.Errorf("perIP counts %d, sessions %d", total, len(s.sessions))
	}
}

func BenchmarkForward(b *testing.B) {
	s := New(Config{Rate: 1 << 50, MaxBytes: 1 << 62}, nopSender{})
	// A realistic table: many sessions, forward on one of them.
	for i := range 5000 {
		if _, err := s.Open(ident(2*i+10), ident(2*i+11), ipAddr(2*i), ipAddr(2*i+1), t0); err != nil {
			b.Fatal(err)
		}
	}
	id, err := s.Open(idA, idB, addrA, addrB, t0)
	if err != nil {
		b.Fatal(err)
	}
	f := frame(id, string(make([]byte, 1200)))
	b.ReportAllocs()
	now := t0
	for b.Loop() {
		now = now.Add(time.Microsecond)
		if !s.Forward(f, addrA, now) {
			b.Fatal("not forwarded")
		}
	}
}

func BenchmarkForwardParallel(b *testing.B) {
	s := New(Config{Rate: 1 << 50, MaxBytes: 1 << 62}, nopSender{})
	id, err := s.Open(idA, idB, addrA, addrB, t0)
	if err != nil {
		b.Fatal(err)
	}
	f := frame(id, string(make([]byte, 1200)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Forward(f, addrA, t0)
		}
	})
}
