package overlay

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// logCapture is a slog handler that keeps every record at Info and above
// (the CLI's default level) and echoes everything under -v.
type logCapture struct {
	mu    *sync.Mutex
	lines *[]string
	echo  slog.Handler
}

func newLogCapture() logCapture {
	c := logCapture{mu: new(sync.Mutex), lines: new([]string)}
	if testing.Verbose() {
		c.echo = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	return c
}

func (c logCapture) Enabled(_ context.Context, l slog.Level) bool { return true }
func (c logCapture) WithAttrs([]slog.Attr) slog.Handler           { return c }
func (c logCapture) WithGroup(string) slog.Handler                { return c }
func (c logCapture) Handle(ctx context.Context, r slog.Record) error {
	if c.echo != nil {
		c.echo.Handle(ctx, r)
	}
	if r.Level < slog.LevelInfo {
		return nil
	}
	var b bytes.Buffer
	slog.NewTextHandler(&b, nil).Handle(ctx, r)
	c.mu.Lock()
	*c.lines = append(*c.lines, strings.TrimSpace(b.String()))
	c.mu.Unlock()
	return nil
}

// matching returns the captured lines at Warn containing every part.
func (c logCapture) matching(parts ...string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
next:
	for _, l := range *c.lines {
		if !strings.Contains(l, "level=WARN") {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// refusalNode starts a node with a captured log.
func refusalNode(t *testing.T, kp *pki.Keypair, pow int, boot ...Contact) (*testNode, logCapture) {
	return refusalNodeWith(t, kp, pow, nil, boot...)
}

func refusalNodeWith(t *testing.T, kp *pki.Keypair, pow int, tune func(*Config), boot ...Contact) (*testNode, logCapture) {
	t.Helper()
	if kp == nil {
		var err error
		if kp, err = pki.GenerateKeypair(context.Background(), max(pow, 0)); err != nil {
			t.Fatal(err)
		}
	}
	logs := newLogCapture()
	dev := newMemDevice()
	cfg := Config{Keypair: kp, PoWBits: pow, Listen: "127.0.0.1:0", Device: dev, Bootstrap: boot, Logger: slog.New(logs), DisableDHT: true}
	if tune != nil {
		tune(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{n, dev}, logs
}

// expectOneLine waits for exactly one warning with every part and logs it.
func expectOneLine(t *testing.T, side string, logs logCapture, parts ...string) {
	t.Helper()
	expectOneLineWithin(t, 10*time.Second, side, logs, parts...)
}

func expectOneLineWithin(t *testing.T, d time.Duration, side string, logs logCapture, parts ...string) {
	t.Helper()
	waitFor(t, side+"'s warning", d, func() bool { return len(logs.matching(parts...)) > 0 })
	got := logs.matching(parts...)
	if len(got) != 1 {
		t.Fatalf("%s logged %d lines, want 1: %q", side, len(got), got)
	}
	t.Logf("%s: %s", side, got[0])
}

// A dial expecting identity X at the address of node B (which is not X)
// fails at once with the reason, and both ends log one line and count it,
// however often the dialer retries. Before: the dial waited out its 5 s
// handshake timeout and nothing was logged or counted.
func TestWrongIdentityRefusalVisible(t *testing.T) {
	b, blogs := refusalNode(t, nil, testPoW)
	a, alogs := refusalNode(t, nil, testPoW)
	x, _ := pki.GenerateKeypair(context.Background(), testPoW)
	wrong := Contact{Identity: x.Identity(), Addr: b.contact().Addr}
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		err := a.Connect(ctx, wrong)
		cancel()
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "the node there is "+b.id.Short()) {
			t.Fatalf("dial %d: %v", i, err)
		}
		if took > 2*time.Second {
			t.Fatalf("dial %d failed after %v: not at once", i, took)
		}
		if i == 0 {
			t.Logf("dial failed after %v: %v", took, err)
		}
	}
	expectOneLine(t, "dialer", alogs, "peer "+x.Identity().Short()+"… is not at "+wrong.Addr.String(), "the node there is "+b.id.Short())
	expectOneLine(t, "refuser", blogs, "refused a dial from "+a.id.Short(), "expects identity "+x.Identity().Short(), "this node is "+b.id.Short())
	// The refuser counts when its side of the handshake ends, which can be
	// after the dialer already has its error: wait for it, with a deadline.
	var as, bs Status
	ok := waitUntil(5*time.Second, func() bool {
		as, bs = a.Status(), b.Status()
		return as.Refusals["refused_us_wrong_identity"] >= 3 && bs.Refusals["we_refused_wrong_identity"] >= 3 && bs.Drops["handshake_refused"] >= 3
	})
	if !ok {
		t.Fatalf("counters: dialer %v, refuser %v (handshake_refused %d)", as.Refusals, bs.Refusals, bs.Drops["handshake_refused"])
	}
	t.Logf("dialer refusals %v", nonZero(as.Refusals))
	t.Logf("refuser refusals %v handshake_refused=%d", nonZero(bs.Refusals), bs.Drops["handshake_refused"])
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

// weakKey returns a key with fewer than bits bits of proof of work.
func weakKey(t *testing.T, bits int) *pki.Keypair {
	for seed := byte(1); ; seed++ {
		kp, err := pki.NewKeypair(bytes.Repeat([]byte{seed}, 32), 0)
		if err != nil {
			t.Fatal(err)
		}
		if kp.PoWBits() < bits {
			return kp
		}
	}
}

// A node whose proof of work is below the network's: refused both ways
// (it dials a strong node; a strong node dials it), with one line on each
// side naming the bits, and counted.
func TestLowPoWRefusalVisible(t *testing.T) {
	const strongBits = 8
	weak := weakKey(t, strongBits)
	t.Run("weak dials strong", func(t *testing.T) {
		s, slogs := refusalNode(t, nil, strongBits)
		w, wlogs := refusalNode(t, weak, -1, s.contact())
		want := "bootstrap " + s.id.Short() + "… refused our proof of work: it requires 8 bits, we have " + strconv.Itoa(weak.PoWBits())
		expectOneLine(t, "weak dialer", wlogs, want)
		expectOneLine(t, "strong refuser", slogs, "refused "+w.id.Short()+"… at 127.0.0.1:", "its proof of work has "+strconv.Itoa(weak.PoWBits())+" bits, this network requires 8")
		waitFor(t, "counters", 5*time.Second, func() bool {
			return w.Status().Refusals["refused_us_low_pow"] > 0 && s.Status().Refusals["we_refused_low_pow"] > 0
		})
		if len(w.Status().Peers) != 0 || len(s.Status().Peers) != 0 {
			t.Fatal("a connection survived")
		}
	})
	t.Run("strong dials weak", func(t *testing.T) {
		w, wlogs := refusalNode(t, weak, -1)
		s, slogs := refusalNode(t, nil, strongBits)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Connect(ctx, w.contact()); err == nil || !strings.Contains(err.Error(), "this network requires 8") {
			t.Fatalf("strong node's dial: %v", err)
		}
		expectOneLine(t, "strong dialer", slogs, "refused "+w.id.Short()+"… at 127.0.0.1:", "its proof of work has "+strconv.Itoa(weak.PoWBits())+" bits, this network requires 8")
		expectOneLine(t, "weak peer", wlogs, "peer "+s.id.Short()+"… refused our proof of work: it requires 8 bits, we have "+strconv.Itoa(weak.PoWBits()))
		if s.Status().Refusals["we_refused_low_pow"] == 0 || w.Status().Refusals["refused_us_low_pow"] == 0 {
			t.Fatalf("counters: %v %v", nonZero(s.Status().Refusals), nonZero(w.Status().Refusals))
		}
	})
}

// Two nodes running the same key, both bootstrapped from p, reset each
// other's connections at p, silently, forever (p's path table has one entry
// per identity, so each one's packets reach the other). Now p sees the node
// whose live connection it replaced still sending as that identity a
// keep-alive period later (6 s by default), warns, and tells both nodes with
// a signed notice, so that each warns too: one line each, however long the
// two keep fighting.
func TestSameKeyOnTwoNodesWarns(t *testing.T) {
	p, plogs := refusalNode(t, nil, testPoW)
	kp, _ := pki.GenerateKeypair(context.Background(), testPoW)
	quick := func(c *Config) { c.KeepAlive, c.IdleTimeout = 300*time.Millisecond, time.Second }
	n1, logs1 := refusalNodeWith(t, kp, testPoW, quick, p.contact())
	n2, logs2 := refusalNodeWith(t, kp, testPoW, quick, p.contact())
	expectOneLineWithin(t, 20*time.Second, "p", plogs, "two nodes run identity "+kp.Identity().Short()+"…", "each node needs its own key file")
	want := "bootstrap " + p.id.Short() + "… sees another node running our identity " + kp.Identity().Short() + "…"
	expectOneLine(t, "node 1", logs1, want, "give each node its own")
	expectOneLine(t, "node 2", logs2, want, "give each node its own")
	// They go on fighting for a while: still one line each.
	time.Sleep(3 * time.Second)
	for i, l := range [][]string{plogs.matching("two nodes run identity"), logs1.matching(want), logs2.matching(want)} {
		if len(l) != 1 {
			t.Fatalf("party %d logged %d lines", i, len(l))
		}
	}
	if p.Status().Refusals["same_identity_seen"] == 0 || n1.Status().Refusals["same_identity_reported"] == 0 || n2.Status().Refusals["same_identity_reported"] == 0 {
		t.Fatalf("counters: p %v, n1 %v, n2 %v", nonZero(p.Status().Refusals), nonZero(n1.Status().Refusals), nonZero(n2.Status().Refusals))
	}
	if d := p.Status().Drops["handshake_refused"]; d != 0 {
		t.Fatalf("p refused %d handshakes: it must not pick a winner", d)
	}
}

// A node that crashed (no CONNECTION_CLOSE) and came back with its key on
// another port is not two nodes: its old address is silent, so no warning.
func TestRestartOnNewPortIsNotTwoNodes(t *testing.T) {
	quick := func(c *Config) { c.KeepAlive, c.IdleTimeout = 300*time.Millisecond, 5*time.Second }
	p, plogs := refusalNodeWith(t, nil, testPoW, quick)
	kp, _ := pki.GenerateKeypair(context.Background(), testPoW)
	udp, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old, _ := refusalNodeWith(t, kp, testPoW, func(c *Config) { quick(c); c.Conn = udp }, p.contact())
	waitFor(t, "first run connected", 10*time.Second, func() bool { return p.peer(kp.Identity()) != nil })
	first := p.peer(kp.Identity())
	udp.Close() // the crash: its socket is gone, nothing says goodbye
	defer old.Close()
	_, nlogs := refusalNodeWith(t, kp, testPoW, quick, p.contact())
	waitFor(t, "second run connected", 10*time.Second, func() bool {
		q := p.peer(kp.Identity())
		return q != nil && q != first
	})
	// p replaced a connection it believed alive: the check ran.
	if cause := context.Cause(first.Conn.Context()); cause == nil || !strings.Contains(cause.Error(), "replaced") {
		t.Fatalf("the first run's connection ended with %v, not replaced while alive", cause)
	}
	// p's check runs KeepAlive + 1 s after the replacement.
	time.Sleep(3 * time.Second)
	if l := plogs.matching("two nodes run identity"); len(l) != 0 {
		t.Fatalf("a restart was taken for two nodes: %q", l)
	}
	if l := nlogs.matching("sees another node"); len(l) != 0 {
		t.Fatalf("the restarted node was told: %q", l)
	}
}

// A node at its peer limit (every peer a bootstrap contact) refuses a new
// connection: both ends say so once, and count it.
func TestPeerLimitRefusalVisible(t *testing.T) {
	c, _ := refusalNode(t, nil, testPoW)
	b, blogs := refusalNodeWith(t, nil, testPoW, func(cfg *Config) { cfg.MaxPeers = 1 }, c.contact())
	waitFor(t, "b keeps its bootstrap", 10*time.Second, func() bool { return b.peer(c.id) != nil })
	a, alogs := refusalNode(t, nil, testPoW)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a.Connect(ctx, b.contact()) // may return before b's verdict arrives
	expectOneLine(t, "refuser", blogs, "refused "+a.id.Short()+"…: the peer limit (1) is reached")
	expectOneLine(t, "dialer", alogs, "peer "+b.id.Short()+"… refused our connection: too many peers")
	if b.Status().Refusals["we_refused_peer_limit"] == 0 || a.Status().Refusals["refused_us_closed"] == 0 {
		t.Fatalf("counters: %v %v", nonZero(b.Status().Refusals), nonZero(a.Status().Refusals))
	}
}
