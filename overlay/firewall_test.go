package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
)

// newFirewallNode is a netstack node on loopback with fw, bootstrapped
// from boot.
func newFirewallNode(t *testing.T, fw FirewallConfig, boot ...Contact) *Node {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Logger: testLogger(t), DisableDHT: true,
		Bootstrap: boot, Firewall: fw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// echoOn serves a line echo on n's port.
func echoOn(t *testing.T, n *Node, port string) {
	ln, err := n.Listen("tcp", ":"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

// echo dials to:port from n and checks one round trip within d.
func echo(n, to *Node, port uint16, d time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(to.Addr(), port).String())
	if err != nil {
		return nil, err
	}
	if err := roundTrip(c, d); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func roundTrip(c net.Conn, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	msg := []byte("through the firewall\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errors.New("echo mismatch")
	}
	return nil
}

// The Done-means case of the firewall on netstack nodes, over real QUIC:
// A admits tcp/8080 from B only; B's connection works, C's does not and
// A's stats show C's drop; A's own connection to C's port works both ways;
// a reload that moves the rule to C drops B's open flow and lets C in.
func TestFirewallInProcess(t *testing.T) {
	b := newFirewallNode(t, FirewallConfig{})
	c := newFirewallNode(t, FirewallConfig{})
	lo := netip.MustParseAddr("127.0.0.1")
	a := newFirewallNode(t, FirewallConfig{Allow: []string{b.Identity().String() + " tcp/8080"}}, b.Contact(lo), c.Contact(lo))
	echoOn(t, a, "8080")
	echoOn(t, c, "9090")
	waitFor(t, "A connected to B and C", 20*time.Second, func() bool { return a.peer(b.Identity()) != nil && a.peer(c.Identity()) != nil })

	bc, err := echo(b, a, 8080, 20*time.Second)
	if err != nil {
		t.Fatalf("B -> A:8080: %v", err)
	}
	defer bc.Close()
	if cc, err := echo(c, a, 8080, 2*time.Second); err == nil {
		cc.Close()
		t.Fatal("C -> A:8080 passed A's firewall")
	}
	st := a.Status().Firewall
	if st == nil || st.Dropped["no_rule"] == 0 || st.Default != "deny" || st.Rules != 1 {
		t.Fatalf("A's firewall status %+v", st)
	}
	found := false
	for _, d := range st.RecentDrops {
		found = found || d.Peer == c.Identity() && d.Proto == "tcp" && d.Port == 8080
	}
	if !found {
		t.Fatalf("C's drop is not among A's recent drops: %+v", st.RecentDrops)
	}
	ac, err := echo(a, c, 9090, 20*time.Second)
	if err != nil {
		t.Fatalf("A -> C:9090 (replies through A's firewall): %v", err)
	}
	ac.Close()

	dropped, err := a.ReloadFirewall(FirewallConfig{Allow: []string{c.Identity().String() + " tcp/8080"}})
	if err != nil || dropped < 1 {
		t.Fatalf("reload: %d flows dropped, %v (want B's)", dropped, err)
	}
	if err := roundTrip(bc, 2*time.Second); err == nil {
		t.Fatal("B's open connection still works after its rule went")
	}
	if cc, err := echo(c, a, 8080, 20*time.Second); err != nil {
		t.Fatalf("C -> A:8080 after the reload: %v", err)
	} else {
		cc.Close()
	}
	if _, err := b.ReloadFirewall(FirewallConfig{}); !errors.Is(err, ErrNoFirewall) {
		t.Fatalf("reload on a node without a firewall: %v", err)
	}
}

// A bad rule is refused at New with an error naming it.
func TestFirewallConfigErrors(t *testing.T) {
	for _, fc := range []FirewallConfig{
		{Allow: []string{"* tcp/99999"}},
		{Allow: []string{"nobody tcp/22"}},
		{InboundDefault: "open"},
	} {
		_, err := New(Config{PoWBits: -1, Listen: "127.0.0.1:0", DisableDHT: true, Firewall: fc})
		if err == nil || !strings.Contains(err.Error(), "Config.Firewall") {
			t.Fatalf("%+v: %v", fc, err)
		}
		if len(fc.Allow) > 0 && !strings.Contains(err.Error(), fc.Allow[0]) && !errors.Is(err, firewall.ErrBadRule) {
			t.Fatalf("the error does not name the rule: %v", err)
		}
	}
}

// A SPIFFE pattern admits a member, whose certificate chains to the CA,
// and not a stranger whose self-signed certificate claims an ID of the
// same trust domain (node 0 accepts strangers: it is not members-only).
func TestFirewallSPIFFEOnlyFromTheCA(t *testing.T) {
	mn := newMemberNet(t, 3, 2, func(i int, c *Config) {
		if i == 0 {
			c.Members.MembersOnly = false
			c.Firewall = FirewallConfig{Allow: []string{"spiffe://" + memberTD + "/* udp/5000"}}
		}
	})
	a, m := mn.signers[0], mn.signers[1]
	stranger := memberNode(t, nil, func(c *Config) { c.Bootstrap = []Contact{a.contact()} })
	waitFor(t, "the stranger connected to node 0", 20*time.Second, func() bool { return a.peer(stranger.id) != nil })
	if sid := a.peer(stranger.id).SPIFFEID; !strings.HasPrefix(sid, "spiffe://"+memberTD+"/") {
		t.Fatalf("the stranger claims no SPIFFE ID of the trust domain: %q", sid)
	}
	got := func(payload string) bool { return gotPayload(a.dev, payload) }
	waitFor(t, "a member's packet through node 0's firewall", 20*time.Second, func() bool {
		m.dev.Send(udp6(m.addr, a.addr, []byte("from a member")))
		time.Sleep(20 * time.Millisecond)
		return got("from a member")
	})
	dropped := func() bool { return droppedNoRule(a, stranger.id, 5000) }
	waitFor(t, "node 0 dropping the stranger's packet", 20*time.Second, func() bool {
		stranger.dev.Send(udp6(stranger.addr, a.addr, []byte("from a stranger")))
		time.Sleep(20 * time.Millisecond)
		return dropped()
	})
	if got("from a stranger") {
		t.Fatal("the stranger's packet reached node 0's device")
	}
}

// A member the CA approves again under another workload path, and that
// pushes its renewed certificate, is named anew at once: the rule that
// admitted its old name stops admitting it (flows included) without a
// reconnection, and the new name is what the firewall matches.
func TestFirewallSPIFFERenamedByRenewal(t *testing.T) {
	mn := newMemberNet(t, 3, 2, func(i int, c *Config) {
		if i == 0 {
			c.Members.MembersOnly = false
			c.Firewall = FirewallConfig{Allow: []string{"spiffe://" + memberTD + "/* udp/5000"}}
		}
	})
	a, m := mn.signers[0], mn.signers[1]
	// m's name as it connected, exactly (a last "*" would match the
	// longer new name too), and the new name.
	if _, err := a.ReloadFirewall(FirewallConfig{Allow: []string{
		"spiffe://" + memberTD + "/" + m.id.String() + " udp/5000",
		"spiffe://" + memberTD + "/*/guest udp/6000",
	}}); err != nil {
		t.Fatal(err)
	}
	got := func(payload string) bool { return gotPayload(a.dev, payload) }
	dropped := func(port uint16) bool { return droppedNoRule(a, m.id, port) }
	waitFor(t, "a member's packet to udp/5000 through node 0's firewall", 20*time.Second, func() bool {
		m.dev.Send(udp6p(m.addr, a.addr, 4000, 5000, []byte("as a node")))
		time.Sleep(20 * time.Millisecond)
		return got("as a node")
	})
	for _, s := range mn.signers {
		if _, err := s.CAApprove(m.id, "/guest"); err != nil {
			t.Fatal(err)
		}
	}
	conn := a.peer(m.id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cert, err := m.RequestCACertificate(ctx, tca.RequestConfig{Workload: "/guest", Validity: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.InstallLeaf(cert.DER); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node 0 taking the renamed certificate", 20*time.Second, func() bool {
		return a.Status().Members.Counters["peer_leaf_renamed"] >= 1
	})
	if a.peer(m.id) != conn {
		t.Fatal("the renewal replaced the connection")
	}
	// The flow its old name admitted, from the same port, is dropped now.
	waitFor(t, "node 0 dropping what only the old name admitted", 10*time.Second, func() bool {
		m.dev.Send(udp6p(m.addr, a.addr, 4000, 5000, []byte("old name")))
		time.Sleep(20 * time.Millisecond)
		return dropped(5000)
	})
	if got("old name") {
		t.Fatal("a packet only the old name admits reached node 0's device")
	}
	waitFor(t, "the new name's packet through node 0's firewall", 10*time.Second, func() bool {
		m.dev.Send(udp6p(m.addr, a.addr, 4001, 6000, []byte("as a guest")))
		time.Sleep(20 * time.Millisecond)
		return got("as a guest")
	})
}

// udp6p is udp6 from source port sp to destination port dp.
func udp6p(src, dst netip.Addr, sp, dp uint16, payload []byte) []byte {
	b := udp6(src, dst, payload)
	binary.BigEndian.PutUint16(b[40:], sp)
	binary.BigEndian.PutUint16(b[42:], dp)
	return b
}

// gotPayload drains what dev's node wrote to it, and reports whether a
// packet ending in payload was among it.
func gotPayload(dev *memDevice, payload string) bool {
	for {
		select {
		case p := <-dev.Got:
			if strings.HasSuffix(string(p), payload) {
				return true
			}
		default:
			return false
		}
	}
}

// droppedNoRule reports whether a's firewall shows a recent drop of a UDP
// packet from peer to port for want of a rule.
func droppedNoRule(a *testNode, peer pki.Identity, port uint16) bool {
	for _, d := range a.Status().Firewall.RecentDrops {
		if d.Peer == peer && d.Proto == "udp" && d.Port == port && d.Reason == "no_rule" {
			return true
		}
	}
	return false
}
