// Command udpflood sends unauthenticated garbage to a node's UDP port at a
// fixed rate, for the hostile-network script (scripts/hostile-test.sh).
// Test tooling only: it must only ever be pointed at addresses inside the
// test's own network namespaces.
//
//	udpflood send -to IP:PORT [-bind IP:PORT] [-pps 20000] [-duration 10s]
//	    [-peer IDENTITY] [-target IDENTITY] [-seed S]
//
// Every packet comes from one source address. The mix, in turn: SMPR probe
// requests of the right length with a fresh timestamp and a random MAC (half
// of them claiming to be -peer, a real peer of the target, so they pass every
// check short of the MAC), hellos to -target with a fresh timestamp and a
// random signature, probe replies, CRLY frames for random sessions, and
// random bytes that look like QUIC short- and long-header packets. It stops
// after -duration or at SIGTERM and prints "sent N packets in D (R pps)".
package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/korium/korium-tun/internal/tool"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

func main() {
	_, fs := tool.Args("udpflood", "send")
	to := fs.String("to", "", "where to send (IP:PORT)")
	bind := fs.String("bind", "", "local address (default: any)")
	pps := fs.Int("pps", 20000, "packets per second")
	dur := fs.Duration("duration", 10*time.Second, "how long")
	peerHex := fs.String("peer", "", "identity of a real peer of the target, claimed by half of the requests")
	targetHex := fs.String("target", "", "the target's identity (hellos are addressed to it)")
	seed := fs.Uint64("seed", 1, "PRNG seed")
	fs.Parse(os.Args[2:])
	if err := run(*to, *bind, *pps, *dur, *peerHex, *targetHex, *seed); err != nil {
		tool.Fail("udpflood", err)
	}
}

func parseID(s string) (pki.Identity, error) {
	if s == "" {
		return pki.Identity{}, nil
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != pki.IdentitySize {
		return pki.Identity{}, fmt.Errorf("bad identity %q: want %d hex bytes", s, pki.IdentitySize)
	}
	return pki.Identity(b), nil
}

func run(to, bind string, pps int, dur time.Duration, peerHex, targetHex string, seed uint64) error {
	dst, err := netip.ParseAddrPort(to)
	if err != nil {
		return fmt.Errorf("-to: %v", err)
	}
	if pps <= 0 || dur <= 0 {
		return errors.New("-pps and -duration must be positive")
	}
	peer, err := parseID(peerHex)
	if err != nil {
		return fmt.Errorf("-peer: %v", err)
	}
	target, err := parseID(targetHex)
	if err != nil {
		return fmt.Errorf("-target: %v", err)
	}
	var laddr *net.UDPAddr
	if bind != "" {
		if laddr, err = net.ResolveUDPAddr("udp", bind); err != nil {
			return fmt.Errorf("-bind: %v", err)
		}
	}
	c, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return err
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	const batch = 64
	ms := make([]ipv4.Message, batch)
	bufs := make([][]byte, batch)
	for i := range ms {
		bufs[i] = make([]byte, 0, 1500)
	}
	ua := net.UDPAddrFromAddrPort(dst)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	start := time.Now()
	sent, kind := 0, 0
	for {
		el := time.Since(start)
		if el >= dur || len(stop) > 0 {
			break
		}
		due := int(el.Seconds()*float64(pps)) - sent
		if due <= 0 {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		n := min(due, batch)
		for i := 0; i < n; i++ {
			bufs[i] = garbage(bufs[i][:0], kind, rng, peer, target)
			kind++
			ms[i] = ipv4.Message{Buffers: [][]byte{bufs[i]}, Addr: ua}
		}
		w, err := pc.WriteBatch(ms[:n], 0)
		if err != nil && w == 0 {
			// A full send buffer: count nothing and go on.
			time.Sleep(time.Millisecond)
			continue
		}
		sent += w
	}
	el := time.Since(start)
	fmt.Printf("sent %d packets in %v (%.0f pps)\n", sent, el.Round(time.Millisecond), float64(sent)/el.Seconds())
	return nil
}

// garbage appends packet number kind of the mix to b.
func garbage(b []byte, kind int, rng *rand.Rand, peer, target pki.Identity) []byte {
	randID := func() (id pki.Identity) {
		for i := range id {
			id[i] = byte(rng.Uint32())
		}
		return id
	}
	now := time.Now().UnixNano()
	switch kind % 10 {
	case 0, 1, 2, 3, 4, 5: // probe requests: half claim to be the real peer
		from := randID()
		if kind%2 == 0 && peer != (pki.Identity{}) {
			from = peer
		}
		p := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeRequest, TxID: rng.Uint64(), Timestamp: now}, From: from}
		for i := range p.MAC {
			p.MAC[i] = byte(rng.Uint32())
		}
		return wire.AppendProbe(b, &p)
	case 6: // a hello with a random signature
		h := wire.Hello{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeHello, TxID: rng.Uint64(), Timestamp: now}, From: randID(), PoWNonce: rng.Uint64(), To: target}
		for i := range h.Sig {
			h.Sig[i] = byte(rng.Uint32())
		}
		return wire.AppendHello(b, &h)
	case 7: // a probe reply nobody asked for
		p := wire.Probe{ProbeHeader: wire.ProbeHeader{Type: wire.ProbeReply, TxID: rng.Uint64(), Timestamp: now}, From: peer}
		return wire.AppendProbe(b, &p)
	case 8: // a relay frame for a random session
		var s [16]byte
		for i := range s {
			s[i] = byte(rng.Uint32())
		}
		b = wire.AppendRelayHeader(b, wire.RelayHeader{Session: s})
		return appendRandom(b, 100+rng.IntN(1100), rng)
	default: // random bytes shaped like QUIC short or long headers
		first := byte(0x40 | rng.IntN(0x40))
		if kind%20 == 9 {
			first |= 0xc0
		}
		return appendRandom(append(b, first), 20+rng.IntN(1200), rng)
	}
}

func appendRandom(b []byte, n int, rng *rand.Rand) []byte {
	for i := 0; i < n; i++ {
		b = append(b, byte(rng.Uint32()))
	}
	return b
}
