package smartsock

import (
	"context"
	"net"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

func TestHoldOf(t *testing.T) {
	const silent = 3 * time.Second
	for _, tc := range []struct {
		name                       string
		validated, connected, live bool
		sinceSigned                time.Duration
		want                       evidence
	}{
		{"proven, connected, answering", true, true, true, -1, byProof},
		{"proven but no longer answering", true, true, false, -1, byWord},
		{"proven by a connection that closed", true, false, true, -1, byWord},
		{"proven, not answering, hello just now", true, true, false, time.Second, byPresence},
		{"hello just now", false, false, true, 0, byPresence},
		{"hello long ago", false, true, true, 10 * time.Second, byWord},
		{"named only", false, true, true, -1, byWord},
	} {
		if got := holdOf(tc.validated, tc.connected, tc.live, tc.sinceSigned, silent); got != tc.want {
			t.Errorf("%s: hold %d, want %d", tc.name, got, tc.want)
		}
	}
	// Only stronger evidence moves an address.
	for _, tc := range []struct {
		ev, hold evidence
		want     bool
	}{
		{byWord, byWord, false}, {byPresence, byWord, true}, {byProof, byWord, true},
		{byPresence, byPresence, false}, {byProof, byPresence, true},
		{byWord, byProof, false}, {byPresence, byProof, false}, {byProof, byProof, false},
	} {
		if got := takes(tc.ev, tc.hold); got != tc.want {
			t.Errorf("takes(%d, %d) = %v", tc.ev, tc.hold, got)
		}
	}
}

// TestAddressFreedForNewIdentity: the rule that keeps a proven path must not
// lock out whoever really is at the address now. Y's node stops and a node
// with another identity, Z, starts on the same port and dials us while we
// still hold Y's connection (its idle timeout has not passed): Z's signed
// hellos make us check Y's path, Y no longer answers there, and Z connects
// within seconds.
func TestAddressFreedForNewIdentity(t *testing.T) {
	a, y := newEnd(t, true), newEnd(t, true)
	ida := a.kp.Identity()
	cay, cya := connect(t, a, y)
	setKeys(t, a, y, cay, cya)
	addrY := loopback(y.udp)
	port := y.udp.LocalAddr().(*net.UDPAddr).Port
	y.tr.Close()
	y.sock.Close()

	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified, Port: port})
	if err != nil {
		t.Fatalf("rebinding Y's port: %v", err)
	}
	z := &end{kp: newKey(t), udp: udp}
	if z.sock, err = New(udp, Config{Keypair: z.kp, PoWBits: testPoW}); err != nil {
		t.Fatal(err)
	}
	z.tr = &quic.Transport{Conn: z.sock, ConnectionIDGenerator: ConnIDGenerator{}}
	t.Cleanup(func() { z.tr.Close(); z.sock.Close() })
	ln, err := a.tr.Listen(a.tls(t, nil), quicConf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	virtA, err := z.sock.AddPeer(ida, loopback(a.udp))
	if err != nil {
		t.Fatal(err)
	}
	// The overlay's check on every connection: the certificate's identity
	// must own the virtual address smartsock attributed the packets to.
	valid := make(chan *quic.Conn, 1)
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			id, err := pki.PeerIdentity(c.ConnectionState().TLS)
			if err != nil || !smartaddr.Owns(id, c.RemoteAddr().(*net.UDPAddr).AddrPort().Addr()) {
				c.CloseWithError(1, "identity does not own its address")
				continue
			}
			valid <- c
			return
		}
	}()
	start := time.Now()
	var zc *quic.Conn
	for zc == nil && time.Since(start) < 15*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := z.tr.Dial(ctx, virtA, z.tls(t, &ida), quicConf)
		cancel()
		if err != nil {
			continue
		}
		select {
		case <-valid:
			zc = c
		case <-c.Context().Done(): // refused: its packets were still Y's
		case <-time.After(3 * time.Second):
			t.Fatal("a neither accepted nor refused Z's connection")
		}
	}
	if zc == nil {
		t.Fatalf("Z never connected from Y's old address (a's stats %+v)", a.sock.Stats())
	}
	t.Logf("Z connected %v after it started", time.Since(start).Round(time.Millisecond))
	a.sock.Confirm(z.kp.Identity())
	if pi, ok := a.sock.Path(z.kp.Identity()); !ok || pi.Current != addrY || !pi.Confirmed {
		t.Fatalf("Z's path: %+v", pi)
	}
	if a.sock.Stats().AddrReassigned == 0 {
		t.Fatal("the address was not counted as reassigned")
	}
	if pi, _ := a.sock.Path(y.kp.Identity()); pi.Current == addrY {
		t.Fatal("Y still holds the address Z proved")
	}
}
