package overlay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/rpc"
)

const memberTD = "members.example"

// memberNet is a members-only network of K-of-N signers over loopback:
// they ran a DKG, approved each other, got their certificates, and run
// again with --members-only.
type memberNet struct {
	ca      *tca.CA
	signers []*testNode
	keys    []*pki.Keypair
	states  []*tca.SignerState
	dir     string
}

func memberNode(t *testing.T, kp *pki.Keypair, tune func(*Config)) *testNode {
	t.Helper()
	if kp == nil {
		var err error
		if kp, err = pki.GenerateKeypair(context.Background(), testPoW); err != nil {
			t.Fatal(err)
		}
	}
	dev := newMemDevice()
	cfg := Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Logger: testLogger(t), DHT: dhtConfigForOneHost(),
		TrustDomain: memberTD, CA: tca.Config{Republish: 300 * time.Millisecond, CommitWait: 10 * time.Second, CallTimeout: 3 * time.Second}}
	if tune != nil {
		tune(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{n, dev}
}

func newMemberNet(t *testing.T, n, k int, tune func(i int, c *Config)) *memberNet {
	t.Helper()
	mn := &memberNet{dir: t.TempDir()}
	var first []*testNode
	var ids []pki.Identity
	for i := 0; i < n; i++ {
		nd := memberNode(t, nil, func(c *Config) {
			if i > 0 {
				c.Bootstrap = []Contact{first[0].contact()}
			}
		})
		first = append(first, nd)
		mn.keys = append(mn.keys, nd.kp)
		ids = append(ids, nd.id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	mn.states = make([]*tca.SignerState, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range first {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.RunCADKG(ctx, tca.DKGConfig{TrustDomain: memberTD, Threshold: k, Signers: ids})
			if err == nil {
				mn.states[i] = r.State
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	mn.ca = mn.states[0].CA
	for i, s := range first {
		if err := s.SetCASigner(mn.states[i], mn.approvals(i)); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if _, err := s.CAApprove(id, ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	leaves := make([][]byte, n)
	for i, s := range first {
		cert, err := s.RequestCACertificate(ctx, tca.RequestConfig{Validity: time.Hour})
		if err != nil {
			t.Fatalf("signer %d's own certificate: %v", i, err)
		}
		leaves[i] = cert.DER
	}
	for _, s := range first {
		s.Close()
	}
	// Run again, members-only, from the same state.
	for i := range first {
		nd := memberNode(t, mn.keys[i], func(c *Config) {
			c.CASigner, c.CA.ApprovalsFile = mn.states[i], mn.approvals(i)
			c.Members = MembersConfig{CA: mn.ca, Leaf: leaves[i], MembersOnly: true, Sweep: 200 * time.Millisecond}
			if i > 0 {
				c.Bootstrap = []Contact{mn.signers[0].contact()}
			}
			if tune != nil {
				tune(i, c)
			}
		})
		mn.signers = append(mn.signers, nd)
	}
	for _, s := range mn.signers[1:] {
		waitFor(t, "signers connected as members", 10*time.Second, func() bool { return membership(mn.signers[0], s.id) == "member" })
	}
	return mn
}

func (mn *memberNet) approvals(i int) string {
	return filepath.Join(mn.dir, fmt.Sprintf("s%d.approvals", i))
}

func (mn *memberNet) contacts() []Contact {
	var out []Contact
	for _, s := range mn.signers {
		out = append(out, s.contact())
	}
	return out
}

// newcomer starts a members-only node that knows the CA and the signers
// but has no certificate yet.
func (mn *memberNet) newcomer(t *testing.T, tune func(*Config)) *testNode {
	t.Helper()
	nd := memberNode(t, nil, func(c *Config) {
		c.Bootstrap = mn.contacts()
		c.Members = MembersConfig{CA: mn.ca, MembersOnly: true, Sweep: 200 * time.Millisecond, LeafFile: filepath.Join(mn.dir, fmt.Sprintf("leaf-%p.pem", c))}
		if tune != nil {
			tune(c)
		}
	})
	for _, s := range mn.signers {
		waitFor(t, "the newcomer connected to every signer", 10*time.Second, func() bool { return nd.peer(s.id) != nil && s.peer(nd.id) != nil })
	}
	return nd
}

func (mn *memberNet) approve(t *testing.T, id pki.Identity, count int) {
	t.Helper()
	for _, s := range mn.signers[:count] {
		if _, err := s.CAApprove(id, ""); err != nil {
			t.Fatal(err)
		}
	}
}

// enroll gets nd a certificate of the given lifetime and installs it.
func enroll(t *testing.T, nd *testNode, validity time.Duration) *tca.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cert, err := nd.RequestCACertificate(ctx, tca.RequestConfig{Validity: validity})
	if err != nil {
		t.Fatal(err)
	}
	if err := nd.InstallLeaf(cert.DER); err != nil {
		t.Fatal(err)
	}
	return cert
}

// membership is how a sees its connection to id ("none" without one).
func membership(a *testNode, id pki.Identity) string {
	p := a.peer(id)
	if p == nil {
		return "none"
	}
	if c := classOf(p); c != classOpen {
		return c.String()
	}
	return "open"
}

// TestMembersOnlyEnrollment is the Done-means scenario in process: three
// signers (2 of 3) approve D; D, reaching them as an enrollee, gets its
// certificate, becomes a member and exchanges packets with them; E,
// approved by one, gets no certificate (an error naming how many
// approved), gets nothing from the signers, and is refused at the
// handshake by a member that is not a signer (counted by reason).
func TestMembersOnlyEnrollment(t *testing.T) {
	mn := newMemberNet(t, 3, 2, nil)
	d := mn.newcomer(t, nil)
	e := mn.newcomer(t, nil)
	for _, s := range mn.signers {
		if membership(s, d.id) != "enrollee" || membership(s, e.id) != "enrollee" {
			t.Fatalf("signer %s sees d as %s, e as %s", s.id.Short(), membership(s, d.id), membership(s, e.id))
		}
	}
	mn.approve(t, d.id, 3)
	mn.approve(t, e.id, 1)

	start := time.Now()
	cert := enroll(t, d, time.Hour)
	t.Logf("D's certificate in %v, signed by %d", time.Since(start).Round(time.Millisecond), len(cert.Signers))
	if pem, err := tca.ReadCertPEM(d.cfg.Members.LeafFile); err != nil || string(pem) != string(cert.DER) {
		t.Fatalf("the leaf file: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := e.RequestCACertificate(ctx, tca.RequestConfig{Validity: time.Hour, Attempts: 1})
	if !errors.Is(err, tca.ErrNotApproved) || !strings.Contains(err.Error(), "1 of the 2 signers needed (of 3) approved") {
		t.Fatalf("E approved by K-1: %v", err)
	}
	t.Logf("E: %v", err)

	// D reconnected as a member and reaches every signer.
	for _, s := range mn.signers {
		waitFor(t, "D a member at "+s.id.Short(), 15*time.Second, func() bool { return membership(s, d.id) == "member" })
		deliver(t, d, s, udp6(d.addr, s.addr, []byte("member to member")))
	}
	// E's packets reach no signer.
	s0 := mn.signers[0]
	before := s0.dp.Counters.RxNotRoutable.Load()
	for i := 0; i < 5; i++ {
		e.dev.Send(udp6(e.addr, s0.addr, []byte("from a non-member")))
	}
	waitFor(t, "E's packets dropped and counted", 5*time.Second, func() bool { return s0.dp.Counters.RxNotRoutable.Load() >= before+5 })
	expectNothing(t, s0.dev, 200*time.Millisecond)

	// D is a member that is no signer: E is refused at its handshake. (In
	// TLS 1.3 the client's side completes before the server has checked
	// its certificate, so E may see a connection for a moment: D never
	// does, and closes it with an alert.)
	refusedAtHandshake(t, e, d, pki.ReasonSelfSigned)
}

// refusedAtHandshake dials m from a and checks that m refused it at the
// handshake, counted under reason ("" for refusals by TLS itself), and
// that neither keeps a connection.
func refusedAtHandshake(t *testing.T, a, m *testNode, reason pki.MemberReason) {
	t.Helper()
	refusedFor(t, a, m, string(reason))
}

func refusedFor(t *testing.T, a, m *testNode, reason string) {
	t.Helper()
	before := m.Status().Members.Refused[reason]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := a.Connect(ctx, m.contact())
	if membership(m, a.id) != "none" {
		t.Fatalf("%s holds a connection to %s", m.id.Short(), a.id.Short())
	}
	if reason != "" {
		waitFor(t, "the refusal counted as "+reason, 5*time.Second, func() bool { return m.Status().Members.Refused[reason] > before })
	} else if err == nil {
		waitFor(t, "the refused connection closed", 5*time.Second, func() bool { return a.peer(m.id) == nil })
	}
	waitFor(t, "the refused connection closed", 5*time.Second, func() bool { return a.peer(m.id) == nil })
	if membership(m, a.id) != "none" {
		t.Fatalf("%s holds a connection to %s", m.id.Short(), a.id.Short())
	}
}

// TestEnrolleeGetsNothingButTheCA: a non-member connected to a signer as an
// enrollee tries DHT requests, gossip on another topic, a relay request,
// an application request, DKG messages and IP packets: it gets nothing
// for any, each counted; it is no DHT seed, gossip peer or route of the
// signer's.
func TestEnrolleeGetsNothingButTheCA(t *testing.T) {
	mn := newMemberNet(t, 3, 2, nil)
	s := mn.signers[0]
	e := mn.newcomer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := s.Subscribe("chat")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Subscribe("chat"); err != nil { // tells its peers: gossip the signer refuses
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"dht":   func() error { _, err := e.callConnected(ctx, s.id, rpc.ProtoDHT, []byte{1, 2, 3}); return err },
		"relay": func() error { _, err := e.callConnected(ctx, s.id, rpc.ProtoRelay, []byte{1}); return err },
		"app":   func() error { _, err := e.callConnected(ctx, s.id, rpc.ProtoApp, []byte("hello")); return err },
		"ca": func() error {
			_, err := e.callConnected(ctx, s.id, rpc.ProtoCA, []byte{1, 2, 0}) // a DKG share's header
			return err
		},
		"big dht": func() error { _, err := e.callConnected(ctx, s.id, rpc.ProtoDHT, make([]byte, 9000)); return err },
	} {
		if err := call(); err == nil {
			t.Errorf("%s: an enrollee got an answer", name)
		}
	}
	for i := 0; i < 20; i++ {
		e.Publish("chat", []byte("from a non-member"))
		e.dev.Send(udp6(e.addr, s.addr, []byte("x")))
	}
	st := func() *MembersStatus { return s.Status().Members }
	defer func() {
		if t.Failed() {
			t.Logf("at the signer: %+v", st())
		}
	}()
	waitFor(t, "every attempt counted", 10*time.Second, func() bool {
		m := st()
		return m.Enrollee["dht"] >= 1 && m.Enrollee["relay"] >= 1 && m.Enrollee["app"] >= 1 && m.Enrollee["ca"] >= 1 &&
			m.Enrollee["gossip"] >= 1 && m.Enrollee["ip"] >= 20 && m.Counters["enrollee_rpc_too_large"] >= 1
	})
	select {
	case m := <-sub.Messages():
		t.Fatalf("the signer got a non-member's message: %q", m.Data)
	case <-time.After(300 * time.Millisecond):
	}
	expectNothing(t, s.dev, 100*time.Millisecond)
	for _, c := range s.dhtSeeds() {
		if c.Identity == e.id {
			t.Fatal("the enrollee is a DHT seed")
		}
	}
	for _, p := range s.TopicPeers("chat") {
		if p.ID == e.id {
			t.Fatal("the enrollee is a gossip peer")
		}
	}
	if snap, ok := s.DHTSnapshot(); ok {
		for _, b := range snap.Buckets {
			for _, c := range b.Contacts {
				if c.Identity == e.id {
					t.Fatal("the enrollee is in the routing table")
				}
			}
		}
	}
	// No relaying to it either: a member asking the signer for a session
	// to the enrollee is refused.
	if s.relaySrv == nil {
		t.Fatal("the signer does not relay: the check below would prove nothing")
	}
	if _, err := s.nat.HandleRelay(ctx, mn.signers[1].id, relay.AppendConnectReq(nil, e.id)); err == nil || !strings.Contains(err.Error(), "not a member") {
		t.Fatalf("a relay session to an enrollee: %v", err)
	}
	// The signer sends it nothing either: no route to an enrollee.
	s.dev.Send(udp6(s.addr, e.addr, []byte("to a non-member")))
	expectNothing(t, e.dev, 300*time.Millisecond)
	t.Logf("enrollee refusals at the signer: %v", st().Enrollee)
}

// TestEnrolleeWindowAndCap: enrollees are capped (more are refused at the
// handshake) and disconnected after EnrolleeTTL.
func TestEnrolleeWindowAndCap(t *testing.T) {
	mn := newMemberNet(t, 3, 2, func(i int, c *Config) {
		if i == 0 {
			c.Members.MaxEnrollees, c.Members.EnrolleeTTL = 1, 2*time.Second
		}
	})
	s := mn.signers[0]
	e1 := memberNode(t, nil, func(c *Config) { c.Members = MembersConfig{CA: mn.ca, MembersOnly: true} })
	e2 := memberNode(t, nil, func(c *Config) { c.Members = MembersConfig{CA: mn.ca, MembersOnly: true} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e1.Connect(ctx, s.contact()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first enrollee admitted", 5*time.Second, func() bool { return membership(s, e1.id) == "enrollee" })
	refusedFor(t, e2, s, "enrollees_full")
	waitFor(t, "the enrollee's window to close", 10*time.Second, func() bool { return s.peer(e1.id) == nil })
	if s.Status().Members.Counters["enrollees_timed_out"] == 0 {
		t.Fatal("not counted")
	}
}

// TestMemberRenewalAndExpiry: a member renews at two thirds of its
// certificate's life and its peers keep the connection (the renewed leaf
// is pushed to them); revoked on enough signers, its next renewal fails
// and every member disconnects it within a sweep of its expiry; it comes
// back only as an enrollee, with nothing routed.
func TestMemberRenewalAndExpiry(t *testing.T) {
	mn := newMemberNet(t, 3, 2, nil)
	d := mn.newcomer(t, nil)
	mn.approve(t, d.id, 3)
	const life = 9 * time.Second
	first := enroll(t, d, life)
	s := mn.signers[1]
	waitFor(t, "D a member", 15*time.Second, func() bool { return membership(s, d.id) == "member" })
	conn := s.peer(d.id)
	waitFor(t, "D renewed", life, func() bool { return d.Status().Members.Counters["renewed"] >= 1 })
	renewed := d.mem.leaf.Load().cert
	if !renewed.NotAfter.After(first.Leaf.NotAfter) {
		t.Fatal("the renewal did not extend the certificate")
	}
	waitFor(t, "the renewed leaf at the signer", 5*time.Second, func() bool {
		p := s.peer(d.id)
		return p != nil && memberOf(p).notAfter.Load() == renewed.NotAfter.UnixNano()
	})
	if s.peer(d.id) != conn {
		t.Fatal("the renewal replaced the connection")
	}
	// Past the first certificate's expiry the connection is still there.
	time.Sleep(time.Until(first.Leaf.NotAfter.Add(500 * time.Millisecond)))
	if s.peer(d.id) != conn {
		t.Fatal("disconnected at the old certificate's expiry despite the renewal")
	}

	// Revoked on 2 of 3: fewer than K approve; the next renewal fails.
	for _, sg := range mn.signers[:2] {
		if err := sg.CARevoke(d.id); err != nil {
			t.Fatal(err)
		}
	}
	expiry := renewed.NotAfter
	waitFor(t, "D's member connections closed", time.Until(expiry)+15*time.Second, func() bool {
		for _, sg := range mn.signers {
			if membership(sg, d.id) == "member" {
				return false
			}
		}
		return true
	})
	late := time.Since(expiry)
	if late > time.Minute || late < -time.Second {
		t.Fatalf("disconnected %v after the expiry", late)
	}
	if d.Status().Members.Counters["renew_failed"] == 0 {
		t.Fatal("the failed renewal was not counted")
	}
	for _, sg := range mn.signers {
		if sg.Status().Members.Counters["expired_disconnected"] == 0 && membership(sg, d.id) != "none" {
			t.Fatalf("signer %s: %+v", sg.id.Short(), sg.Status().Members.Counters)
		}
	}
	fmt.Printf("members-only: an expired member disconnected %v after its certificate's expiry (sweep 200ms)\n", late.Round(time.Millisecond))
	// It may reconnect to a signer only as an enrollee: no packets pass.
	waitFor(t, "D back as an enrollee", 10*time.Second, func() bool { return membership(s, d.id) == "enrollee" })
	d.dev.Send(udp6(d.addr, s.addr, []byte("expired")))
	expectNothing(t, s.dev, 300*time.Millisecond)
}

// TestForgedCertificatesRefused: a members-only member that is no signer
// refuses, at the handshake and counted by reason, a self-signed
// certificate naming the trust domain, a leaf of another CA for the same
// trust domain, an expired leaf of the real CA, and a member's leaf
// presented by another key.
func TestForgedCertificatesRefused(t *testing.T) {
	mn := newMemberNet(t, 3, 2, nil)
	m := mn.newcomer(t, nil)
	mn.approve(t, m.id, 2)
	mLeaf := enroll(t, m, time.Hour)
	waitFor(t, "m a member", 15*time.Second, func() bool { return membership(mn.signers[0], m.id) == "member" })

	// An attacker whose leaf expired: approved, a 3-second certificate.
	old := mn.newcomer(t, nil)
	mn.approve(t, old.id, 2)
	oldLeaf := enroll(t, old, 3*time.Second)
	for _, sg := range mn.signers[:2] {
		sg.CARevoke(old.id)
	}
	time.Sleep(time.Until(oldLeaf.Leaf.NotAfter.Add(100 * time.Millisecond)))
	// m's sweep (every 200 ms) closes old's connection from before: only
	// then does old have to dial m again.
	waitFor(t, "old's expired connection closed", 5*time.Second, func() bool { return membership(m, old.id) != "member" })

	attacker := func(present func(kp *pki.Keypair) *tls.Certificate) *testNode {
		a := memberNode(t, nil, func(c *Config) { c.Members = MembersConfig{CA: mn.ca} })
		if present != nil {
			c := present(a.kp)
			cert, _ := x509.ParseCertificate(c.Certificate[0])
			a.mem.leaf.Store(&ownLeaf{tls: *c, cert: cert})
		}
		return a
	}
	otherCA := foreignCA(t, memberTD)
	for _, c := range []struct {
		name   string
		node   *testNode
		reason pki.MemberReason
	}{
		{"self-signed with a SPIFFE ID of the trust domain", attacker(nil), pki.ReasonSelfSigned},
		{"signed by another CA of the trust domain", attacker(func(kp *pki.Keypair) *tls.Certificate {
			c, _, err := pki.LeafCertificate(kp, otherCA.leaf(t, kp))
			if err != nil {
				t.Fatal(err)
			}
			return &c
		}), pki.ReasonOtherCA},
		{"an expired leaf of the CA", old, pki.ReasonExpired},
		{"a member's leaf presented by another key", attacker(func(kp *pki.Keypair) *tls.Certificate {
			return &tls.Certificate{Certificate: [][]byte{mLeaf.DER}, PrivateKey: kp.PrivateKey()}
		}), ""},
	} {
		if c.node == old {
			// old was a member while its leaf was valid and may still hold
			// a connection to m: m's expiry sweep (every 5 s) must close it
			// before the new handshake can be refused.
			waitFor(t, "m's sweep closes the expired member's connection", 15*time.Second, func() bool { return membership(m, old.id) == "none" })
		}
		refusedAtHandshake(t, c.node, m, c.reason)
		t.Logf("%s: refused (%s)", c.name, c.reason)
	}
}

// foreignCA is an ordinary Ed25519 CA that claims the trust domain.
type fakeCA struct {
	cert *x509.Certificate
	key  ed25519.PrivateKey
	td   string
}

func foreignCA(t *testing.T, td string) *fakeCA {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	u, _ := url.Parse("spiffe://" + td)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not the CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &fakeCA{cert: cert, key: priv, td: td}
}

func (ca *fakeCA) leaf(t *testing.T, kp *pki.Keypair) []byte {
	t.Helper()
	u, _ := url.Parse("spiffe://" + ca.td + "/" + kp.Identity().String())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{SerialNumber: pki.PoWSerialNumber(kp.Nonce())},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, kp.Identity().PublicKey(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
