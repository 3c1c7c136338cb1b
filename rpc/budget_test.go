package rpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
)

type fakeStream struct{ cancels int }

func (f *fakeStream) CancelRead(quic.StreamErrorCode) { f.cancels++ }

func ident(i int) pki.Identity {
	var id pki.Identity
	binary.BigEndian.PutUint32(id[:], uint32(i))
	return id
}

// checkBudget verifies the accounting: every byte held by a reservation is
// counted once in its account and once in the total, and no cap is passed.
func checkBudget(t *testing.T, b *budget) {
	t.Helper()
	sum := 0
	for _, a := range b.accounts {
		held := 0
		for i, r := range a.res {
			if r.idx != i || r.acct != a || r.revoked {
				t.Fatalf("reservation %d of %x misfiled: idx %d revoked %v", i, a.id[:4], r.idx, r.revoked)
			}
			held += r.held
		}
		if held != a.used || a.used > b.perPeer {
			t.Fatalf("account %x: reservations hold %d, used %d, per-peer cap %d", a.id[:4], held, a.used, b.perPeer)
		}
		sum += a.used
	}
	if sum != b.used || b.used > b.total {
		t.Fatalf("accounts hold %d, total used %d, cap %d", sum, b.used, b.total)
	}
}

func TestBudgetCapsAndFairShare(t *testing.T) {
	b := newBudget(100, 250)
	a1, a2, a3 := b.join(ident(1)), b.join(ident(2)), b.join(ident(3))
	s1, s1b := &fakeStream{}, &fakeStream{}
	r1, r1b := b.forStream(a1, s1), b.forStream(a1, s1b)
	if err := r1.grow(60); err != nil {
		t.Fatal(err)
	}
	// The peer's cap counts all its streams.
	if err := r1b.grow(50); !errors.Is(err, errOverPeerBudget) {
		t.Fatalf("second stream past the peer cap: %v", err)
	}
	if err := r1b.grow(40); err != nil {
		t.Fatal(err)
	}
	r2 := b.forStream(a2, &fakeStream{})
	if err := r2.grow(100); err != nil {
		t.Fatal(err)
	}
	r3 := b.forStream(a3, &fakeStream{})
	if err := r3.grow(50); err != nil { // the total is now full: 250
		t.Fatal(err)
	}
	checkBudget(t, b)
	// Peer 3 holds 50, peers 1 and 2 hold 100 each: peer 3 may grow by
	// taking peer 1's or 2's largest stream.
	if err := r3.grow(10); err != nil {
		t.Fatalf("grow below the fair share with the total full: %v", err)
	}
	checkBudget(t, b)
	// Peers 1 and 2 tie: either loses its largest stream, and only that.
	var taken *reservation
	switch {
	case r1.revoked && !r2.revoked:
		taken = r1
		if s1.cancels != 1 || s1b.cancels != 0 || b.used != 200 || a1.used != 40 {
			t.Fatalf("taking from peer 1: cancels %d %d, used %d, peer 1 holds %d", s1.cancels, s1b.cancels, b.used, a1.used)
		}
	case r2.revoked && !r1.revoked && !r1b.revoked:
		taken = r2
		if b.used != 160 || a2.used != 0 {
			t.Fatalf("taking from peer 2: used %d, peer 2 holds %d", b.used, a2.used)
		}
	default:
		t.Fatalf("taken: %v %v %v", r1.revoked, r1b.revoked, r2.revoked)
	}
	if a3.used != 60 {
		t.Fatalf("the grower holds %d, want 60", a3.used)
	}
	if err := taken.grow(1); !errors.Is(err, errPreempted) {
		t.Fatalf("a taken stream grew again: %v", err)
	}
	if !taken.release() {
		t.Fatal("release does not report the stream was taken")
	}
	// Nobody gives to a peer that would end up holding as much as them.
	b2 := newBudget(100, 200)
	x, y := b2.join(ident(1)), b2.join(ident(2))
	rx, ry := b2.forStream(x, &fakeStream{}), b2.forStream(y, &fakeStream{})
	rx.grow(100)
	ry.grow(100)
	rz := b2.forStream(b2.join(ident(3)), &fakeStream{})
	if err := rz.grow(100); !errors.Is(err, errOverNodeBudget) {
		t.Fatalf("grow to the richest peer's level with the total full: %v", err)
	}
	if rx.revoked && ry.revoked {
		t.Fatal("both full peers were taken from")
	}
	// Release and leave give everything back.
	for _, r := range []*reservation{r1, r1b, r2, r3} {
		r.release()
	}
	for _, a := range []*account{a1, a2, a3} {
		b.leave(a)
	}
	checkBudget(t, b)
	if b.used != 0 || len(b.accounts) != 0 {
		t.Fatalf("after release: used %d, %d accounts", b.used, len(b.accounts))
	}
}

// TestBudgetMaxMin drives a budget with random growth and releases from
// many peers and checks, after every step, the accounting and the fairness
// promise: a growth refused for the total leaves no other peer holding more
// than the grower asked to hold.
func TestBudgetMaxMin(t *testing.T) {
	const peers, perPeer, total = 12, 1000, 4000
	b := newBudget(perPeer, total)
	rng := rand.New(rand.NewPCG(1, 2))
	var accts []*account
	var live []*reservation
	for i := range peers {
		accts = append(accts, b.join(ident(i)))
	}
	for step := 0; step < 20000; step++ {
		switch op := rng.IntN(10); {
		case op < 2 || len(live) == 0:
			live = append(live, b.forStream(accts[rng.IntN(peers)], &fakeStream{}))
		case op < 3:
			i := rng.IntN(len(live))
			live[i].release()
			live = append(live[:i], live[i+1:]...)
		default:
			r := live[rng.IntN(len(live))]
			delta := 1 + rng.IntN(300)
			err := r.grow(delta)
			if errors.Is(err, errOverNodeBudget) {
				want := r.acct.used + delta
				for _, a := range b.accounts {
					if a != r.acct && a.used > want {
						t.Fatalf("step %d: refused %d -> %d while a peer holds %d", step, r.acct.used, want, a.used)
					}
				}
			}
		}
		// Taken reservations are dropped by their owners.
		kept := live[:0]
		for _, r := range live {
			if r.revoked {
				r.release()
				continue
			}
			kept = append(kept, r)
		}
		live = kept
		checkBudget(t, b)
	}
}

// recordingReader serves a frame and notes, at each Read, how many bytes
// were consumed so far and how many the budget held.
type recordingReader struct {
	r    io.Reader
	b    *budget
	off  int
	seen map[int]int // offset -> budget used when a Read began there
}

func (rr *recordingReader) Read(p []byte) (int, error) {
	if _, ok := rr.seen[rr.off]; !ok {
		rr.seen[rr.off] = rr.b.buffered()
	}
	n, err := rr.r.Read(p)
	rr.off += n
	return n, err
}

// TestReservationFollowsArrival: announcing 1 MiB reserves nothing; the
// first byte reserves 4 KiB, and the reservation doubles only as the
// buffer fills.
func TestReservationFollowsArrival(t *testing.T) {
	b := newBudget(DefaultPeerBudget, DefaultNodeBudget)
	a := b.join(ident(1))
	res := b.forStream(a, &fakeStream{})
	frame := binary.AppendUvarint([]byte{ProtoApp}, MaxMessageSize)
	hdr := len(frame)
	frame = append(frame, make([]byte, 10000)...) // then EOF: a truncated request
	rr := &recordingReader{r: bytes.NewReader(frame), b: b, seen: map[int]int{}}
	caps := Sizes{}
	_, _, err := readRequest(rr, &caps, res)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated request: %v", err)
	}
	for off, want := range map[int]int{
		hdr:          0,              // waiting for the first payload byte: nothing reserved
		hdr + 1:      firstChunk,     // the first byte arrived
		hdr + 4096:   2 * firstChunk, // the first chunk is full
		hdr + 8192:   4 * firstChunk, //
		hdr + 10000:  4 * firstChunk, // EOF found with 16 KiB reserved
		hdr + 16<<10: -1,             // never reached
	} {
		got, ok := rr.seen[off]
		switch {
		case want < 0 && ok:
			t.Errorf("read at offset %d happened", off)
		case want >= 0 && !ok:
			t.Errorf("no read at offset %d", off)
		case want >= 0 && got != want:
			t.Errorf("at offset %d (payload byte %d) %d bytes reserved, want %d", off, off-hdr, got, want)
		}
	}
	if res.release(); b.buffered() != 0 {
		t.Fatalf("%d bytes still reserved after release", b.buffered())
	}
}

// TestPerProtocolCaps: each protocol is refused above its own cap, on the
// server before anything is allocated and in Server.Call before sending;
// a response above the caller's cap is not read.
func TestPerProtocolCaps(t *testing.T) {
	p := newPair(t, Config{MaxSize: Sizes{ProtoDHT: 100, ProtoRelay: 20}})
	echo := func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) { return req, nil }
	var ran atomic.Int64
	p.srv.Handle(ProtoDHT, func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		ran.Add(1)
		return echo(ctx, from, req)
	})
	p.srv.Handle(ProtoRelay, echo)
	p.srv.Handle(ProtoApp, func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		return make([]byte, len(req)), nil
	})
	// At the cap: fine.
	if resp, err := p.srv.Call(ctxFor(t, 5*time.Second), p.client, ProtoDHT, make([]byte, 100)); err != nil || len(resp) != 100 {
		t.Fatalf("DHT at its cap: %d, %v", len(resp), err)
	}
	// Above: the caller with the same caps refuses before sending ...
	_, err := p.srv.Call(ctxFor(t, 5*time.Second), p.client, ProtoDHT, make([]byte, 101))
	wantKind(t, err, ErrTooLarge)
	// ... and a caller without them is answered "too large" after the
	// prefix, for DHT and relay alike, while 1 MiB of app still goes.
	for _, c := range []struct {
		proto byte
		n     int
	}{{ProtoDHT, 101}, {ProtoRelay, 21}} {
		_, err := Call(ctxFor(t, 5*time.Second), p.client, c.proto, make([]byte, c.n))
		wantKind(t, err, ErrTooLarge)
	}
	if resp, err := Call(ctxFor(t, 10*time.Second), p.client, ProtoApp, make([]byte, MaxMessageSize)); err != nil || len(resp) != MaxMessageSize {
		t.Fatalf("1 MiB app: %d, %v", len(resp), err)
	}
	if n := ran.Load(); n != 1 {
		t.Fatalf("DHT handler ran %d times, want once", n)
	}
	// A response above the caller's cap: the caller stops after its prefix.
	q := newPair(t, Config{})
	q.srv.Handle(ProtoDHT, func(context.Context, pki.Identity, []byte) ([]byte, error) { return make([]byte, 5000), nil })
	caller := NewServer(Config{MaxSize: Sizes{ProtoDHT: 4096}})
	_, err = caller.Call(ctxFor(t, 5*time.Second), q.client, ProtoDHT, nil)
	wantKind(t, err, ErrTooLarge)
	if s := p.srv.Stats(); s.TooLarge != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// halfSend opens a stream that announces n bytes of proto and sends n-1.
func halfSend(t testing.TB, c *quic.Conn, proto byte, n int) *quic.Stream {
	t.Helper()
	str, err := c.OpenStreamSync(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	str.SetDeadline(time.Now().Add(10 * time.Second))
	// The write fails when the server refuses the request while it arrives.
	str.Write(append(binary.AppendUvarint([]byte{proto}, uint64(n)), make([]byte, n-1)...))
	return str
}

// TestBudgetsOverQUIC: a peer that half-sends more than its budget has the
// excess streams refused; other peers' requests go through; when peers
// fill the node budget, a peer holding less takes from them.
func TestBudgetsOverQUIC(t *testing.T) {
	const size = 64 << 10
	srv := NewServer(Config{MaxMessageSize: size, PeerBudget: 2 * size, NodeBudget: 4 * size, StreamTimeout: 20 * time.Second})
	srv.Handle(ProtoApp, func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		return binary.AppendUvarint(nil, uint64(len(req))), nil
	})
	bad1, bad2, honest := newPairOn(t, srv), newPairOn(t, srv), newPairOn(t, srv)

	// Four half-sent requests of 64 KiB from one peer, one after the
	// other: two fit its budget, the next two are refused.
	var strs []*quic.Stream
	for i := range 4 {
		strs = append(strs, halfSend(t, bad1.client, ProtoApp, size))
		waitFor(t, fmt.Sprintf("request %d held or refused", i), 10*time.Second, func() bool {
			s := srv.Stats()
			return s.Buffered == int64(min(i+1, 2)*size) && s.OverPeerBudget == uint64(max(i-1, 0))
		})
	}
	refused := 0
	for _, str := range strs {
		str.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		st, text, err := ReadResponse(str, MaxMessageSize)
		if err == nil && st == StatusRefused && bytes.Contains(text, []byte("request buffers full: this peer's")) {
			refused++
		}
	}
	if refused != 2 {
		t.Fatalf("%d streams answered, want the 2 refused", refused)
	}
	// Another peer is not affected.
	resp, err := Call(ctxFor(t, 5*time.Second), honest.client, ProtoApp, make([]byte, size))
	if err != nil || !bytes.Equal(resp, binary.AppendUvarint(nil, size)) {
		t.Fatalf("honest call while a peer is at its budget: %x, %v", resp, err)
	}
	// A second attacker fills the node budget.
	b2a := halfSend(t, bad2.client, ProtoApp, size)
	waitFor(t, "3/4 of the node budget used", 10*time.Second, func() bool { return srv.Stats().Buffered == 3*size })
	b2b := halfSend(t, bad2.client, ProtoApp, size)
	waitFor(t, "node budget full", 10*time.Second, func() bool { return srv.Stats().Buffered == 4*size })
	// The honest peer's request still goes through: it takes a stream of
	// an attacker, who holds more than it would.
	resp, err = Call(ctxFor(t, 5*time.Second), honest.client, ProtoApp, make([]byte, size))
	if err != nil || !bytes.Equal(resp, binary.AppendUvarint(nil, size)) {
		t.Fatalf("honest call with the node budget full: %x, %v", resp, err)
	}
	if s := srv.Stats(); s.Preempted == 0 {
		t.Fatalf("nothing was taken: %+v", s)
	}
	// The taken stream was told why; whichever it was.
	answered := 0
	for _, str := range append(strs, b2a, b2b) {
		str.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if st, text, err := ReadResponse(str, MaxMessageSize); err == nil && st == StatusRefused && bytes.Contains(text, []byte("taken")) {
			answered++
		}
	}
	if answered == 0 {
		t.Fatal("no attacker stream was answered for being taken")
	}
}

// FuzzReadRequestBudget: the server's decoder with a cap per protocol and
// a budget. Whatever the input, a payload stays within its protocol's cap,
// the reservation covers the buffer holding it and never passes the
// budget, and release gives all of it back.
func FuzzReadRequestBudget(f *testing.F) {
	f.Add(AppendRequest(nil, ProtoApp, bytes.Repeat([]byte{1}, 5000)))
	f.Add(AppendRequest(nil, ProtoDHT, make([]byte, 100)))
	f.Add(AppendRequest(nil, ProtoRelay, make([]byte, 51)))
	f.Add(binary.AppendUvarint([]byte{ProtoCA}, 1<<20))
	f.Add(append(binary.AppendUvarint([]byte{ProtoApp}, 9000), make([]byte, 8500)...))
	f.Add([]byte{ProtoGossip, 0})
	caps := Sizes{ProtoDHT: 100, ProtoGossip: 200, ProtoRelay: 50, ProtoApp: 9000, ProtoCA: 300}
	const budgetSize = 8192
	f.Fuzz(func(t *testing.T, in []byte) {
		b := newBudget(budgetSize, budgetSize)
		res := b.forStream(b.join(ident(1)), &fakeStream{})
		proto, payload, err := readRequest(bytes.NewReader(in), &caps, res)
		if res.held > budgetSize || b.used != res.held {
			t.Fatalf("reservation %d, budget used %d, cap %d", res.held, b.used, budgetSize)
		}
		if err == nil {
			if !KnownProto(proto) || len(payload) > caps.Max(proto) {
				t.Fatalf("accepted proto %d with %d bytes", proto, len(payload))
			}
			if len(payload) > 0 && res.held != cap(payload) {
				t.Fatalf("a %d-byte buffer held with %d bytes reserved", cap(payload), res.held)
			}
			if out := AppendRequest(nil, proto, payload); !bytes.HasPrefix(in, out) {
				t.Fatalf("re-encoding %x is not a prefix of %x", out, in)
			}
		}
		if res.release(); b.used != 0 {
			t.Fatalf("%d bytes reserved after release", b.used)
		}
	})
}
