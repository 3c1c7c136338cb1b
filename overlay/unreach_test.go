package overlay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/datapath"
	"github.com/korium/korium-tun/internal/ip6"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// newNetstackNode starts a node with the default in-process netstack device.
func newNetstackNode(t testing.TB, boot ...Contact) *Node {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Bootstrap: boot, Logger: testLogger(t), DHT: dhtConfigForOneHost()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func loopbackContact(n *Node) Contact { return n.Contact(netip.MustParseAddr("127.0.0.1")) }

// TestDialUnownedAddressFailsFast: a Go Dial over netstack to a SmartAddr
// nobody owns fails as soon as the DHT lookup fails (the node answers the
// SYN with Destination Unreachable), not after the caller's whole timeout.
// Before: the dial hung for its full 10 s timeout.
func TestDialUnownedAddressFailsFast(t *testing.T) {
	seed := newNetstackNode(t)
	a := newNetstackNode(t, loopbackContact(seed))
	waitFor(t, "join", 10*time.Second, func() bool { s := a.Status().DHT; return s != nil && s.TableSize > 0 })
	var nobody pki.Identity
	nobody[3] = 42
	dst := netip.AddrPortFrom(smartaddr.FromIdentity(nobody), 80)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := a.DialContext(ctx, "tcp", dst.String())
	took := time.Since(start)
	t.Logf("dial to an unowned address failed after %v: %v", took, err)
	if err == nil {
		t.Fatal("dial to an unowned address succeeded")
	}
	if errors.Is(err, context.DeadlineExceeded) || took > 3*time.Second {
		t.Fatalf("dial took %v (%v): want a fast failure", took, err)
	}
	if !strings.Contains(err.Error(), "no node owns "+dst.Addr().String()) {
		t.Fatalf("unclear error: %v", err)
	}
	if st := a.Status(); st.Counters["icmp_unreachable_sent"] == 0 {
		t.Fatalf("no Destination Unreachable counted: %v", st.Counters)
	}
	// A second dial hits the cached failure and fails as fast.
	start = time.Now()
	if _, err := a.DialContext(ctx, "tcp", dst.String()); err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("second dial: %v after %v", err, time.Since(start))
	}
}

// TestFirstDialAfterNew: a Dial made right after New, before the bootstrap
// connection is up, waits for the join instead of failing (its lookup would
// find an empty routing table) and connects without a SYN retransmission.
func TestFirstDialAfterNew(t *testing.T) {
	seed := newNetstackNode(t)
	c := newNetstackNode(t, loopbackContact(seed))
	ln, err := c.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			s.Write([]byte("hi"))
			s.Close()
		}
	}()
	// c's record must be findable before a newcomer looks it up.
	waitFor(t, "c's record", 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := seed.ResolveAddr(ctx, c.Addr())
		return err == nil
	})
	var worst time.Duration
	for i := 0; i < 3; i++ {
		a := newNetstackNode(t, loopbackContact(seed))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		s, err := a.DialContext(ctx, "tcp", netip.AddrPortFrom(c.Addr(), 7000).String())
		took := time.Since(start)
		cancel()
		if err != nil {
			t.Fatalf("first dial after New: %v after %v", err, took)
		}
		got, _ := io.ReadAll(s)
		s.Close()
		if string(got) != "hi" {
			t.Fatalf("read %q", got)
		}
		t.Logf("first dial after New took %v", took)
		worst = max(worst, took)
		a.Close()
	}
	// A lost SYN costs gVisor's initial retransmission timeout of 1 s.
	if worst >= time.Second {
		t.Fatalf("a first dial took %v: its SYN was lost", worst)
	}
}

// newFailingNode is a node (memDevice) whose resolver never finds anyone.
func newFailingNode(t *testing.T) *testNode {
	return newResolvingNode(t, func(context.Context, netip.Addr) ([]Contact, error) {
		return nil, errors.New("not found")
	}, time.Minute)
}

// A failed resolution answers the held packet with ICMPv6 Destination
// Unreachable, code 3, quoting it, from the unreachable address; further
// packets to that address are answered at once.
func TestResolveFailureAnswersUnreachable(t *testing.T) {
	a := newFailingNode(t)
	var nobody pki.Identity
	nobody[5] = 9
	dst := pkiAddr(nobody)
	for i := 0; i < 2; i++ {
		p := udp6(a.addr, dst, []byte("knock"))
		a.dev.Send(p)
		select {
		case got := <-a.dev.Got:
			src, to, ok := ip6.Addrs(got)
			if !ok || src != dst || to != a.addr || got[6] != 58 || got[40] != ip6.TypeDstUnreachable || got[41] != ip6.CodeAddrUnreachable {
				t.Fatalf("not a Destination Unreachable (address unreachable) from %v: %x", dst, got[:48])
			}
			if ip6.Checksum(got[8:24], got[24:40], got[40:]) != 0 {
				t.Fatal("bad ICMPv6 checksum")
			}
			if !bytes.Equal(got[48:], p) {
				t.Fatal("the error does not quote the packet")
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d: no Destination Unreachable", i)
		}
	}
}

// ICMPv6 errors are never answered with one, nor packets from addresses
// that cannot take an answer; and a flood of packets to dead addresses
// gets at most the rate limit's worth of answers.
func TestUnreachableNeverAnswersErrorsAndIsRateLimited(t *testing.T) {
	a := newFailingNode(t)
	var nobody pki.Identity
	nobody[5] = 9
	dst := pkiAddr(nobody)
	// Resolve and fail once.
	a.dev.Send(udp6(a.addr, dst, []byte("x")))
	<-a.dev.Got
	icmpErr := udp6(a.addr, dst, make([]byte, 8))
	icmpErr[6], icmpErr[40] = 58, ip6.TypeDstUnreachable
	a.dev.Send(icmpErr)
	unspec := udp6(netip.IPv6Unspecified(), dst, []byte("x"))
	a.dev.Send(unspec)
	before := a.dp.Counters.TxResolveFailed.Load()
	waitFor(t, "both dropped", 5*time.Second, func() bool { return a.dp.Counters.TxResolveFailed.Load() == before+2 })
	expectNothing(t, a.dev, 100*time.Millisecond)

	const flood = 3000
	start := time.Now()
	p := udp6(a.addr, dst, []byte("flood"))
	for i := 0; i < flood; i++ {
		a.dev.Send(p)
	}
	waitFor(t, "flood read", 10*time.Second, func() bool { return a.dp.Counters.TxResolveFailed.Load() >= before+2+flood })
	elapsed := time.Since(start)
	sent := a.dp.Counters.ICMPUnreachSent.Load()
	limit := uint64(datapath.ICMPRate + datapath.ICMPRate*elapsed.Seconds() + 2)
	t.Logf("%d packets to a dead address in %v: %d answered, %d rate-limited", flood, elapsed, sent, a.dp.Counters.ICMPRateLimited.Load())
	if sent > limit {
		t.Fatalf("%d Destination Unreachable in %v, limit %d", sent, elapsed, limit)
	}
	if a.dp.Counters.ICMPRateLimited.Load() == 0 {
		t.Fatal("nothing rate-limited")
	}
}

// An owner that exists (the resolver found it) but does not answer is not
// a dead destination: a relay may be on its way, a NAT may open. The held
// packet is dropped (counted), not answered, so a program keeps retrying.
func TestFoundButUnreachableOwnerNotAnswered(t *testing.T) {
	owner, _ := pki.GenerateKeypair(context.Background(), testPoW)
	found := func(context.Context, netip.Addr) ([]Contact, error) {
		return []Contact{{Identity: owner.Identity(), Addr: netip.MustParseAddrPort("127.0.0.1:9")}}, nil
	}
	kp, _ := pki.GenerateKeypair(context.Background(), testPoW)
	dev := newMemDevice()
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Resolver: found, HandshakeTimeout: 300 * time.Millisecond, DisableDHT: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	dst := smartaddr.FromIdentity(owner.Identity())
	dev.Send(udp6(n.Addr(), dst, []byte("anyone?")))
	waitFor(t, "the dial fails", 5*time.Second, func() bool { return n.dp.Counters.ResolveFailed.Load() == 1 })
	dev.Send(udp6(n.Addr(), dst, []byte("again")))
	waitFor(t, "the retry is dropped", 5*time.Second, func() bool { return n.dp.Counters.TxResolveFailed.Load() == 2 })
	expectNothing(t, dev, 100*time.Millisecond)
	if n.dp.Counters.ICMPUnreachSent.Load() != 0 {
		t.Fatal("answered an owner that exists with Destination Unreachable")
	}
}
