package smartsock

import (
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/wire"
)

// probeDriver runs the demux fixture's probe loop for P1 (direct and
// proven) and answers P1's probes as P1 would, after delay.
type probeDriver struct {
	f      *demuxFixture
	p1     *peer
	probes int // probe requests sent to P1
	late   []answer
	gone   bool          // P1's path is a black hole: nothing arrives from it
	off    time.Duration // since the driver started
	// ackLag: what P1 sends back to a tick's traffic (a keep-alive's
	// ACK, delayed by the peer) arrives this many ticks later; 0: in
	// the same tick.
	ackLag int
	acks   []time.Duration // offsets at which P1's answers arrive
	// theirs, if set, reports the ticks in which P1's keep-alive arrives,
	// late in the tick; we write its ACK 25 ms later, in the next one,
	// and nothing answers that.
	theirs func(off time.Duration) bool
	ackOut bool
	// authAt is when the last packet of P1's arrived that its QUIC
	// connection authenticated (P1's own, not a spoofer's), for the
	// auth clock (withAuthClock); spoof: a spoofer sends junk with P1's
	// address every tick.
	authAt time.Time
	spoof  bool
}

// withAuthClock gives P1 an auth clock, as the overlay does with quic-go's
// SinceAuthenticated: the driver's own packets of P1's set it.
func (d *probeDriver) withAuthClock() *probeDriver {
	d.f.c.call(func() {
		d.p1.authAge = func() (time.Duration, bool) { return d.f.now.Sub(d.authAt), !d.authAt.IsZero() }
	})
	return d
}

type answer struct {
	at time.Time
	tx uint64
}

func newProbeDriver(t *testing.T) *probeDriver {
	f := newDemuxFixture(t)
	d := &probeDriver{f: f}
	f.c.call(func() { d.p1 = f.c.peerOf(dxP1.Identity()) })
	return d
}

// run advances the clock by dur in ticks; traffic reports whether QUIC
// packets went to P1 and came from it during the tick that starts at the
// given offset (from the driver's start). P1 answers probes after delay.
func (d *probeDriver) run(dur, delay time.Duration, traffic func(off time.Duration) bool) {
	f, c := d.f, d.f.c
	for end := d.off + dur; d.off < end; d.off += tickEvery {
		if traffic(d.off) {
			d.p1.sentAt.Store(f.now.UnixNano())
			d.p1.sent.Store(true)
			if !d.gone {
				d.acks = append(d.acks, d.off+time.Duration(d.ackLag)*tickEvery)
			}
		}
		if d.ackOut {
			d.ackOut = false
			d.p1.sentAt.Store(f.now.Add(15 * time.Millisecond).UnixNano())
			d.p1.sent.Store(true)
		}
		if d.theirs != nil && d.theirs(d.off) && !d.gone {
			at := f.now.Add(tickEvery - 10*time.Millisecond).UnixNano()
			d.p1.lastRecv.Store(at)
			c.call(func() { d.p1.current.lastRecv.Store(at) })
			d.authAt = time.Unix(0, at)
			d.ackOut = true
		}
		for len(d.acks) > 0 && d.acks[0] <= d.off {
			d.acks = d.acks[1:]
			d.p1.lastRecv.Store(f.now.UnixNano())
			c.call(func() { d.p1.current.lastRecv.Store(f.now.UnixNano()) })
			d.authAt = f.now
		}
		if d.spoof {
			// A short-header-shaped packet from P1's address: the demux
			// hands it to quic-go, which cannot decrypt it.
			junk := append([]byte{0x40}, make([]byte, 60)...)
			c.demux([]ipv4.Message{dxMsg(junk, dxAddr1)}, 1, f.now)
		}
		f.tick(tickEvery)
		for _, s := range f.sends {
			if s.dst == dxAddr1 && s.size == wire.RequestSize {
				d.probes++
				var tx uint64
				c.call(func() { tx = d.p1.current.probeTx.Load() })
				if !d.gone {
					d.late = append(d.late, answer{f.now.Add(delay), tx})
				}
			}
		}
		for len(d.late) > 0 && !d.late[0].at.After(f.now) {
			r := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeReply, TxID: d.late[0].tx, Timestamp: f.now.UnixNano()},
				From: dxP1.Identity(), Observed: dxAddr1}
			r.Seal(&dxKey1, dxSelf.Identity())
			c.demux([]ipv4.Message{dxMsg(wire.AppendProbe(nil, &r), dxAddr1)}, 1, f.now)
			d.late = d.late[1:]
		}
	}
}

func (d *probeDriver) alive() (ok bool, missed int) {
	d.f.c.call(func() {
		pa := d.p1.current
		ok, missed = alive(pa, d.f.now), pa.missed
	})
	return
}

// An idle peer's proven path is probed every IdleProbeInterval when
// nothing arrives on it, not at all while QUIC's keep-alives do (QUICProof),
// also when their ACKs come a tick after them; traffic brings ProbeInterval
// back at once, and the path stays alive throughout.
func TestIdlePeerProbedLess(t *testing.T) {
	d := newProbeDriver(t)
	always := func(time.Duration) bool { return true }
	never := func(time.Duration) bool { return false }
	// A keep-alive PING and its ACK every period, and the ACK of the
	// peer's PING two ticks later.
	keepAlive := func(period time.Duration) func(time.Duration) bool {
		return func(off time.Duration) bool { return off%period == 0 || off%period == 2*tickEvery }
	}
	// Keep-alives of both ends, every 15 s: ours (a PING we write, its
	// ACK arriving a tick later), then the peer's (arriving, and our ACK
	// written in the next tick).
	ours := func(off time.Duration) bool { return off%(30*time.Second) == 0 }
	theirs := func(off time.Duration) bool { return off%(30*time.Second) == 15*time.Second }
	const span = 100 * time.Second
	rtt := time.Millisecond
	for _, phase := range []struct {
		name     string
		write    func(time.Duration) bool
		ackLag   int
		min, max int
	}{
		{"keep-alives of both ends", ours, 1, 0, 0},
		{"busy", always, 0, 19, 21},                                // every ProbeInterval
		{"idle", never, 0, 4, 5},                                   // every IdleProbeInterval, after the window that saw traffic
		{"keep-alives 5 s", keepAlive(5 * time.Second), 0, 0, 0},   // QUIC proves the path
		{"keep-alives 15 s", keepAlive(15 * time.Second), 0, 0, 0}, // the default
		{"keep-alives, ACK a tick later", keepAlive(15 * time.Second), 1, 0, 0},
		{"keep-alives 30 s", keepAlive(30 * time.Second), 0, 1, 4}, // longer than QUICProof: probed when the proof lapses
		{"busy again", always, 0, 19, 21},                          // back at once
		{"idle, starved peer", never, 0, 4, 5},                     // see TestLateProbeReplyCounts
		{"keep-alives, starved", keepAlive(15 * time.Second), 0, 0, 0},
	} {
		if phase.name == "idle, starved peer" {
			rtt = 700 * time.Millisecond // beyond probeTimeout of a 1 ms path
		}
		d.ackLag = phase.ackLag
		d.theirs = nil
		if phase.name == "keep-alives of both ends" {
			d.theirs = theirs
		}
		// The end of traffic makes a path quiet for a few seconds (see
		// quiet), and a new phase starts its own probe window.
		d.run(10*time.Second, rtt, phase.write)
		d.probes = 0
		d.run(span, rtt, phase.write)
		ok, missed := d.alive()
		t.Logf("%-22s %2d probes in %v, alive %v, missed %d", phase.name, d.probes, span, ok, missed)
		if d.probes < phase.min || d.probes > phase.max {
			t.Errorf("%s: %d probes in %v, want %d to %d", phase.name, d.probes, span, phase.min, phase.max)
		}
		if !ok {
			t.Errorf("%s: the path is not alive", phase.name)
		}
	}
	// Traffic after idleness: ProbeInterval after the last probe, at most
	// idleTicks+1 ticks after it starts (not at the idle probe's time).
	for range 5 {
		d.run(30*time.Second, time.Millisecond, never)
		var last time.Time
		d.f.c.call(func() { last = d.p1.current.lastProbe })
		d.probes = 0
		start := d.f.now
		for d.probes == 0 && d.f.now.Sub(start) < IdleProbeInterval {
			d.run(tickEvery, time.Millisecond, always)
		}
		want := last.Add(ProbeInterval)
		if soon := start.Add(time.Duration(idleTicks+1) * tickEvery); soon.After(want) {
			want = soon
		}
		// A probe window closing meanwhile restarts the count of busy ticks.
		if took := d.f.now.Sub(want); took > time.Duration(idleTicks+1)*tickEvery {
			t.Errorf("traffic started %v after the last idle probe: the next probe came %v late", start.Sub(last), took)
		}
	}
}

// A reply that comes after its probe timed out, but before the probe
// after it times out, still proves the path: a slow peer is not probed
// every QuietInterval into being declared dead.
func TestLateProbeReplyCounts(t *testing.T) {
	d := newProbeDriver(t)
	busy := func(time.Duration) bool { return true }
	before := d.f.c.Stats()
	d.run(60*time.Second, 700*time.Millisecond, busy)
	after := d.f.c.Stats()
	ok, _ := d.alive()
	lost, bad, replies := after.ProbeLost-before.ProbeLost, after.DropBadProbe-before.DropBadProbe, after.RxProbeReply-before.RxProbeReply
	t.Logf("%d probes, %d replies, %d lost, %d dropped as late", d.probes, replies, lost, bad)
	if !ok {
		t.Fatal("a path that answers every probe 700 ms late is not alive")
	}
	if bad != 0 {
		t.Errorf("%d late replies dropped", bad)
	}
	// Every ProbeInterval a probe, missed, and one more at QuietInterval,
	// answered with the first reply: two probes per interval.
	if d.probes > 2*60/5+2 {
		t.Errorf("%d probes in 60 s to a slow peer, want at most %d", d.probes, 2*60/5+2)
	}
}

// An idle peer's path that stops answering is still found dead fast: the
// first keep-alive left unanswered makes it quiet.
func TestIdlePeerBlackHole(t *testing.T) {
	d := newProbeDriver(t)
	keepAlive := func(off time.Duration) bool { return off%(5*time.Second) == 0 }
	d.run(30*time.Second, time.Millisecond, keepAlive)
	if ok, _ := d.alive(); !ok {
		t.Fatal("the idle path is not alive before the black hole")
	}
	d.gone = true
	start := d.f.now
	for ok := true; ok; ok, _ = d.alive() {
		if d.f.now.Sub(start) > 10*time.Second {
			t.Fatal("an idle peer's black-holed path still alive after 10 s of keep-alives")
		}
		d.run(tickEvery, 0, keepAlive)
	}
	// The keep-alive is due at the start: 0.5 s to be quiet, then three
	// missed probes.
	t.Logf("the black-holed path of an idle peer died after %v", d.f.now.Sub(start))
	if took := d.f.now.Sub(start); took > 3*time.Second {
		t.Errorf("the black-holed path of an idle peer died after %v, want at most 3 s", took)
	}
}

// The same black hole with a spoofer sending junk from the peer's address
// every tick (anybody can write a UDP source address): the path still dies
// as fast, since only packets quic-go authenticated count (the auth clock).
// Before, the junk kept the path alive and never quiet until QUIC's idle
// timeout closed the connection.
func TestIdlePeerBlackHoleSpoofed(t *testing.T) {
	d := newProbeDriver(t).withAuthClock()
	keepAlive := func(off time.Duration) bool { return off%(5*time.Second) == 0 }
	d.run(30*time.Second, time.Millisecond, keepAlive)
	if ok, _ := d.alive(); !ok {
		t.Fatal("the idle path is not alive before the black hole")
	}
	d.gone, d.spoof = true, true
	start := d.f.now
	for ok := true; ok; ok, _ = d.alive() {
		if d.f.now.Sub(start) > 10*time.Second {
			t.Fatal("a black-holed path sprayed with spoofed packets still alive after 10 s")
		}
		d.run(tickEvery, 0, keepAlive)
	}
	if took := d.f.now.Sub(start); took > 3*time.Second {
		t.Errorf("the black-holed, spoofed path of an idle peer died after %v, want at most 3 s", took)
	}
	var raw int64
	d.f.c.call(func() { raw = d.p1.current.lastRecv.Load() })
	if d.f.now.UnixNano()-raw > int64(time.Second) {
		t.Fatal("the spoofed packets never reached the demux: the test tested nothing")
	}
}

// The probe tick leaves an idle peer alone until something is due: at its
// probes and keep-alives, and every idleLook (5 s), not ten times a second.
func TestIdlePeerSkippedByTick(t *testing.T) {
	d := newProbeDriver(t)
	never := func(time.Duration) bool { return false }
	d.run(20*time.Second, time.Millisecond, never) // idle by now
	count := func(traffic func(time.Duration) bool) int {
		looked := 0
		for range 300 {
			var before, after time.Time
			d.f.c.call(func() { before = d.p1.due })
			d.run(tickEvery, time.Millisecond, traffic)
			d.f.c.call(func() { after = d.p1.due })
			if !after.Equal(before) {
				looked++
			}
		}
		return looked
	}
	// Nothing arrives: probed every IdleProbeInterval, looked at for
	// that (send, reply) and every idleLook.
	looked := count(never)
	t.Logf("an idle peer was looked at in %d of 300 ticks", looked)
	if looked > 15 {
		t.Errorf("an idle peer was looked at in %d of 300 ticks, want at most 15", looked)
	}
	// Keep-alives every 15 s, their ACK a tick later: looked at for
	// each (the write, then the answer's due time) and every idleLook.
	d.ackLag = 1
	ka := func(off time.Duration) bool { return off%(15*time.Second) == 0 }
	d.run(30*time.Second, time.Millisecond, ka)
	looked = count(ka)
	t.Logf("an idle peer with keep-alives was looked at in %d of 300 ticks", looked)
	if looked > 15 {
		t.Errorf("an idle peer with keep-alives was looked at in %d of 300 ticks, want at most 15", looked)
	}
	if ok, _ := d.alive(); !ok {
		t.Error("the idle path is not alive")
	}
}

// An idle peer's current path that QUIC packets prove (not probed) still
// holds its address against another identity's hellos from there while it
// answers probes, and loses it once it stops: a refused claim makes us
// probe it (doubted), since the packets that kept it proven may be the
// newcomer's.
func TestIdleProvenPathClaims(t *testing.T) {
	d := newProbeDriver(t)
	f, c := d.f, d.f.c
	d.ackLag = 1
	keepAlive := func(off time.Duration) bool { return off%(15*time.Second) == 0 }
	d.run(60*time.Second, time.Millisecond, keepAlive)
	d.probes = 0
	d.run(60*time.Second, time.Millisecond, keepAlive)
	if d.probes != 0 {
		t.Fatalf("%d probes of a QUIC-proven idle path in 60 s", d.probes)
	}
	owner := func() *peer {
		var p *peer
		c.call(func() {
			if pa := c.real.load(dxAddr1); pa != nil {
				p = pa.peer
			}
		})
		return p
	}
	tx := uint64(1 << 40)
	// Q (another identity, behind the same address: a NAT-mate, a
	// spoofer, or the node that took the address over) says hello every
	// tick, and QUIC packets arrive from the address.
	short := append([]byte{0x40}, make([]byte, 40)...)
	step := func() {
		tx++
		h := wire.NewHello(dxQ, dxSelf.Identity(), tx, f.now.UnixNano())
		c.demux([]ipv4.Message{dxMsg(wire.AppendHello(nil, &h), dxAddr1)}, 1, f.now)
		c.demux([]ipv4.Message{dxMsg(short, dxAddr1)}, 1, f.now)
		d.run(tickEvery, time.Millisecond, keepAlive)
	}
	d.probes = 0
	for range 100 {
		step()
		if owner() != d.p1 {
			t.Fatal("a hello of another identity took the address of an idle peer that answers probes")
		}
	}
	t.Logf("10 s of hellos from the address of an idle peer that answers: %d probes", d.probes)
	if d.probes == 0 {
		t.Error("the refused claims did not make us probe the holder")
	}
	// P1 left the address: nothing answers its probes, Q's packets keep
	// arriving there.
	d.gone = true
	start := f.now
	for owner() == d.p1 {
		if f.now.Sub(start) > 10*time.Second {
			t.Fatal("the address is still the idle peer's 10 s after it stopped answering, though another identity says hello from there")
		}
		step()
	}
	t.Logf("the address moved to the newcomer %v after the old holder stopped answering", f.now.Sub(start))
	if p := owner(); p == nil || p.id != dxQ.Identity() {
		t.Errorf("the address went to %v, want Q", p)
	}
}
