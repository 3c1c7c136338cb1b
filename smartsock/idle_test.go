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
			d.p1.sent.Store(true)
			if !d.gone {
				d.p1.lastRecv.Store(f.now.UnixNano())
				c.call(func() { d.p1.current.lastRecv.Store(f.now.UnixNano()) })
			}
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

// An idle peer's proven path is probed every IdleProbeInterval, also with
// the few writes keep-alives make; traffic brings ProbeInterval back at
// once, and the path stays alive throughout.
func TestIdlePeerProbedLess(t *testing.T) {
	d := newProbeDriver(t)
	always := func(time.Duration) bool { return true }
	never := func(time.Duration) bool { return false }
	// A keep-alive PING and its ACK every 5 s, and the ACK of the peer's
	// PING two ticks later.
	keepAlive := func(off time.Duration) bool {
		return off%(5*time.Second) == 0 || off%(5*time.Second) == 2*tickEvery
	}
	const span = 100 * time.Second
	rtt := time.Millisecond
	for _, phase := range []struct {
		name     string
		write    func(time.Duration) bool
		min, max int
	}{
		{"busy", always, 19, 21},                  // every ProbeInterval
		{"idle", never, 4, 5},                     // every IdleProbeInterval, after the window that saw traffic
		{"keep-alives only", keepAlive, 4, 5},     // still idle
		{"busy again", always, 19, 21},            // back at once
		{"idle, starved peer", never, 4, 5},       // see TestLateProbeReplyCounts
		{"keep-alives, starved", keepAlive, 4, 5}, // answers after the timeout, before the next probe
	} {
		if phase.name == "idle, starved peer" {
			rtt = 700 * time.Millisecond // beyond probeTimeout of a 1 ms path
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

// The probe tick leaves an idle peer alone until something is due: about
// once a second (idleLook) and at its probes, not ten times a second.
func TestIdlePeerSkippedByTick(t *testing.T) {
	d := newProbeDriver(t)
	never := func(time.Duration) bool { return false }
	d.run(20*time.Second, time.Millisecond, never) // idle by now
	looked := 0
	for range 100 {
		var before, after time.Time
		d.f.c.call(func() { before = d.p1.due })
		d.run(tickEvery, time.Millisecond, never)
		d.f.c.call(func() { after = d.p1.due })
		if !after.Equal(before) {
			looked++
		}
	}
	t.Logf("an idle peer was looked at in %d of 100 ticks", looked)
	if looked > 15 {
		t.Errorf("an idle peer was looked at in %d of 100 ticks, want at most 15", looked)
	}
	if ok, _ := d.alive(); !ok {
		t.Error("the idle path is not alive")
	}
}
