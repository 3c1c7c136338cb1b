package datapath

import (
	"testing"
	"time"

	"github.com/korium/korium-tun/internal/ip6"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// expectICMP waits for the device to get an ICMPv6 error of type typ and
// code from src, quoting orig.
func expectICMP(t *testing.T, dev *memDevice, src, dst [16]byte, typ, code byte) {
	t.Helper()
	select {
	case got := <-dev.Got:
		s, d, ok := ip6.Addrs(got)
		if !ok || s.As16() != src || d.As16() != dst || got[6] != 58 || got[40] != typ || got[41] != code {
			t.Fatalf("not ICMPv6 %d/%d from the destination: %x", typ, code, got[:min(len(got), 48)])
		}
		if ip6.Checksum(got[8:24], got[24:40], got[40:]) != 0 {
			t.Fatal("bad ICMPv6 checksum")
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no ICMPv6 %d/%d", typ, code)
	}
}

// The read loop answers through the device: a packet to an address nobody
// owns gets Destination Unreachable (code 3, or 0 for a gVisor device), an
// oversized one Packet Too Big, and packets off the overlay nothing.
func TestReadLoopAnswers(t *testing.T) {
	for _, noRoute := range []bool{false, true} {
		e, dev := newTestEngine(t, func(c *Config) { c.UnreachNoRoute = noRoute })
		var nobody pki.Identity
		nobody[4] = 7
		dst := smartaddr.FromIdentity(nobody)
		dev.Send(udp6(e.cfg.Addr, dst, []byte("anyone?")))
		code := byte(ip6.CodeAddrUnreachable)
		if noRoute {
			code = ip6.CodeNoRoute
		}
		expectICMP(t, dev, dst.As16(), e.cfg.Addr.As16(), ip6.TypeDstUnreachable, code)
		if e.Counters.ResolveFailed.Load() != 1 || e.Counters.ICMPUnreachSent.Load() != 1 {
			t.Fatalf("counters: failed %d, unreachable sent %d", e.Counters.ResolveFailed.Load(), e.Counters.ICMPUnreachSent.Load())
		}
		big := udp6(e.cfg.Addr, dst, make([]byte, e.cfg.MTU))
		dev.Send(big)
		expectICMP(t, dev, dst.As16(), e.cfg.Addr.As16(), ip6.TypePacketTooBig, 0)
		dev.Send(udp6(e.cfg.Addr, smartaddr.Prefix.Addr().Prev(), []byte("off the overlay")))
		deadline := time.Now().Add(5 * time.Second)
		for e.Counters.TxNotOverlay.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case got := <-dev.Got:
			t.Fatalf("answered a packet off the overlay: %x", got)
		default:
		}
	}
}
