package tca

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/edwards25519"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/frost"
)

// memNet is an in-memory network of Services: Publish reaches every other
// node's subscription (asynchronously, as gossip does), Call reaches the
// target's HandleRPC. Nodes can be taken offline; a hook can rewrite
// responses (a lying signer).
type memNet struct {
	mu      sync.Mutex
	nodes   map[pki.Identity]*memNode
	offline map[pki.Identity]bool
	corrupt map[pki.Identity]bool // corrupt this node's signature shares
	calls   atomic.Int64
	byType  map[byte]int
	pubs    atomic.Int64
	wg      sync.WaitGroup
}

type memNode struct {
	net  *memNet
	id   pki.Identity
	svc  *Service
	mu   sync.Mutex
	subs map[string]func(pki.Identity, []byte)
}

func newMemNet() *memNet {
	return &memNet{nodes: map[pki.Identity]*memNode{}, offline: map[pki.Identity]bool{}, corrupt: map[pki.Identity]bool{}}
}

func (n *memNet) add(t testing.TB, kp *pki.Keypair, signer *SignerState, tune func(*Config)) *memNode {
	t.Helper()
	nd := &memNode{net: n, id: kp.Identity(), subs: map[string]func(pki.Identity, []byte){}}
	n.mu.Lock()
	n.nodes[nd.id] = nd
	n.mu.Unlock()
	cfg := Config{Keypair: kp, Network: nd, Signer: signer, Republish: 50 * time.Millisecond, CommitWait: 2 * time.Second, CallTimeout: time.Second}
	if tune != nil {
		tune(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nd.svc = svc
	t.Cleanup(func() { svc.Close(); n.wg.Wait() })
	return nd
}

func (n *memNet) down(id pki.Identity) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.offline[id]
}

func (nd *memNode) Publish(topic string, data []byte) error {
	nd.net.pubs.Add(1)
	if nd.net.down(nd.id) {
		return nil
	}
	nd.net.mu.Lock()
	var hs []func(pki.Identity, []byte)
	for id, o := range nd.net.nodes {
		if id == nd.id || nd.net.offline[id] {
			continue
		}
		o.mu.Lock()
		if h := o.subs[topic]; h != nil {
			hs = append(hs, h)
		}
		o.mu.Unlock()
	}
	nd.net.mu.Unlock()
	data = append([]byte(nil), data...)
	for _, h := range hs {
		nd.net.wg.Add(1)
		go func() { defer nd.net.wg.Done(); h(nd.id, data) }()
	}
	return nil
}

func (nd *memNode) Subscribe(topic string, h func(pki.Identity, []byte)) (func(), error) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.subs[topic] != nil {
		return nil, errors.New("already subscribed")
	}
	nd.subs[topic] = h
	return func() {
		nd.mu.Lock()
		delete(nd.subs, topic)
		nd.mu.Unlock()
	}, nil
}

func (nd *memNode) Call(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	nd.net.calls.Add(1)
	nd.net.mu.Lock()
	if nd.net.byType == nil {
		nd.net.byType = map[byte]int{}
	}
	nd.net.byType[MessageType(req)]++
	nd.net.mu.Unlock()
	nd.net.mu.Lock()
	o := nd.net.nodes[to]
	off := nd.net.offline[to] || nd.net.offline[nd.id]
	bad := nd.net.corrupt[to]
	nd.net.mu.Unlock()
	if o == nil || off {
		return nil, errors.New("unreachable")
	}
	resp, err := o.svc.HandleRPC(ctx, nd.id, append([]byte(nil), req...))
	if err == nil && bad && MessageType(resp) == msgSignShare {
		resp = append([]byte(nil), resp...)
		resp[2] ^= 1 // still a canonical scalar, but the wrong one
	}
	return resp, err
}

func (nd *memNode) Connect(context.Context, pki.Identity) error { return nil }

func keys(t testing.TB, n int) []*pki.Keypair {
	t.Helper()
	out := make([]*pki.Keypair, n)
	for i := range out {
		kp, err := pki.GenerateKeypair(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = kp
	}
	return out
}

func ids(kps []*pki.Keypair) []pki.Identity {
	out := make([]pki.Identity, len(kps))
	for i, kp := range kps {
		out[i] = kp.Identity()
	}
	return out
}

// runDKG runs a t-of-n ceremony among fresh nodes of net and returns their
// states, in the order of kps.
func runDKG(t testing.TB, net *memNet, kps []*pki.Keypair, th int, td string) []*SignerState {
	t.Helper()
	var nodes []*memNode
	for _, kp := range kps {
		nodes = append(nodes, net.add(t, kp, nil, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	states := make([]*SignerState, len(kps))
	errs := make([]error, len(kps))
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Start in a scattered order: a signer that starts late still
			// gets every round-1 message (they are republished).
			time.Sleep(time.Duration((i*37)%5) * 20 * time.Millisecond)
			res, err := nd.svc.RunDKG(ctx, DKGConfig{TrustDomain: td, Threshold: th, Signers: ids(kps)})
			if err == nil {
				states[i] = res.State
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("signer %d: %v", i, err)
		}
	}
	for _, st := range states[1:] {
		if !bytes.Equal(st.CA.DER, states[0].CA.DER) {
			t.Fatal("signers wrote different CA certificates")
		}
	}
	return states
}

func TestDKGAndSigningInMemory(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 6)
	states := runDKG(t, net, kps[:5], 3, "example.org")
	ca := states[0].CA
	if ca.Threshold != 3 || len(ca.Signers) != 5 || !ca.Cert.IsCA {
		t.Fatalf("CA: %d-of-%d, CA %v", ca.Threshold, len(ca.Signers), ca.Cert.IsCA)
	}
	// The CA certificate is an ordinary Ed25519 self-signed certificate.
	if err := ca.Cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatal(err)
	}
	for i, st := range states {
		if err := net.nodes[kps[i].Identity()].svc.SetSigner(st, ""); err != nil {
			t.Fatal(err)
		}
	}
	req := net.add(t, kps[5], nil, nil)
	approve(t, net, kps[:5], kps[5].Identity(), "api")
	cert, err := req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org", Workload: "api"})
	if err != nil {
		t.Fatal(err)
	}
	want := "spiffe://example.org/" + kps[5].Identity().String() + "/api"
	if cert.SPIFFEID.String() != want || len(cert.Signers) != 3 {
		t.Fatalf("got %s signed by %d", cert.SPIFFEID, len(cert.Signers))
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.Leaf.PublicKey.(ed25519.PublicKey), kps[5].Identity().PublicKey()) || cert.Leaf.IsCA || cert.Leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatal("leaf is not the requester's non-CA digitalSignature certificate")
	}
}

// TestSigningWithSignersOffline: with 2 of 5 signers offline signing
// works; with 3 it fails with an error that names the silent ones; a
// signer that goes offline between commitment and share is excluded and
// the request completes with the others.
func TestSigningWithSignersOffline(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 6)
	states := runDKG(t, net, kps[:5], 3, "example.org")
	for i, st := range states {
		net.nodes[kps[i].Identity()].svc.SetSigner(st, "")
	}
	req := net.add(t, kps[5], nil, nil)
	approve(t, net, kps[:5], kps[5].Identity(), "")
	net.mu.Lock()
	net.offline[kps[0].Identity()], net.offline[kps[1].Identity()] = true, true
	net.mu.Unlock()
	if _, err := req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org"}); err != nil {
		t.Fatalf("2 of 5 offline: %v", err)
	}
	net.mu.Lock()
	net.offline[kps[2].Identity()] = true
	net.mu.Unlock()
	_, err := req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org", Attempts: 1})
	if !errors.Is(err, ErrNotEnoughSigners) || !strings.Contains(err.Error(), "2 of the 3 signers needed") {
		t.Fatalf("3 of 5 offline: %v", err)
	}
	t.Logf("3 offline: %v", err)
}

// TestCorruptShareNamed: a signer returning a corrupt share is named, and
// the requester completes with another K.
func TestCorruptShareNamed(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 6)
	states := runDKG(t, net, kps[:5], 3, "example.org")
	for i, st := range states {
		net.nodes[kps[i].Identity()].svc.SetSigner(st, "")
	}
	req := net.add(t, kps[5], nil, nil)
	approve(t, net, kps[:5], kps[5].Identity(), "")
	// Every signer but one is corrupt-free; make sure the liar is among the
	// first K by taking two others offline for the first round.
	liar := kps[3].Identity()
	net.mu.Lock()
	net.corrupt[liar] = true
	net.mu.Unlock()
	cert, err := req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org", Attempts: 6})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range cert.Signers {
		if s == liar {
			t.Fatal("the liar's share is in the certificate")
		}
	}
	if cert.Attempts > 1 {
		if why := cert.Excluded[liar]; !strings.Contains(why, "does not verify") {
			t.Fatalf("liar not named: %v", cert.Excluded)
		}
	}
	// Force the liar in: all but three signers offline, one of them the liar.
	net.mu.Lock()
	net.offline[kps[0].Identity()], net.offline[kps[1].Identity()] = true, true
	net.mu.Unlock()
	_, err = req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org", Attempts: 2})
	if err == nil || !strings.Contains(err.Error(), "excluded "+liar.Short()+": returned a signature share that does not verify") {
		t.Fatalf("liar among the only 3: %v", err)
	}
}

// TestCSRForOtherIdentityOrDomainRefused: signers refuse a CSR whose
// SPIFFE ID names another identity, another trust domain, or a bad
// validity, and open no session for it.
func TestCSRForOtherIdentityOrDomainRefused(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 5)
	states := runDKG(t, net, kps[:3], 2, "example.org")
	sv := net.nodes[kps[0].Identity()].svc
	sv.SetSigner(states[0], "")
	mallory := kps[4].Identity()
	approve(t, net, kps[:1], mallory, "")
	victim := kps[3].Identity()
	now := time.Now()
	base := csrMsg{SPIFFEID: "spiffe://example.org/" + mallory.String(), Serial: [16]byte{1}, NotBefore: uint64(now.Unix()), NotAfter: uint64(now.Add(time.Hour).Unix())}
	for name, mod := range map[string]func(*csrMsg){
		"other identity":     func(m *csrMsg) { m.SPIFFEID = "spiffe://example.org/" + victim.String() },
		"other trust domain": func(m *csrMsg) { m.SPIFFEID = "spiffe://evil.org/" + mallory.String() },
		"dot segment":        func(m *csrMsg) { m.SPIFFEID += "/../x" },
		"too long validity":  func(m *csrMsg) { m.NotAfter = uint64(now.Add(48 * time.Hour).Unix()) },
		"backdated":          func(m *csrMsg) { m.NotBefore = uint64(now.Add(-time.Hour).Unix()) },
		"negative serial":    func(m *csrMsg) { m.Serial[0] = 0x80 },
		"zero serial":        func(m *csrMsg) { m.Serial = [16]byte{} },
	} {
		m := base
		m.ReqID = [16]byte{byte(len(name))}
		mod(&m)
		sv.onCSR(mallory, m.encode())
		if st := sv.Stats(); st.Sessions != 0 || st.CSRAccepted != 0 {
			t.Fatalf("%s: a session was opened: %+v", name, st)
		}
	}
	if st := sv.Stats(); st.CSRRefused != 7 {
		t.Fatalf("refused %d, want 7", st.CSRRefused)
	}
	// The honest form is accepted.
	sv.onCSR(mallory, base.encode())
	if st := sv.Stats(); st.Sessions != 1 {
		t.Fatalf("honest CSR: %+v", st)
	}
}

// signerFixture is a 2-of-3 CA with signer 0 running and a requester key.
func signerFixture(t *testing.T, tune func(*Config)) (*Service, *SignerState, *pki.Keypair) {
	t.Helper()
	net := newMemNet()
	kps := keys(t, 4)
	states := runDKG(t, net, kps[:3], 2, "example.org")
	nd := net.nodes[kps[0].Identity()]
	nd.svc.Close()
	svc := net.add(t, kps[0], states[0], tune).svc
	approve(t, net, kps[:1], kps[3].Identity(), "")
	return svc, states[0], kps[3]
}

func csrFor(id pki.Identity, reqID byte) csrMsg {
	now := time.Now()
	return csrMsg{ReqID: [16]byte{reqID}, SPIFFEID: "spiffe://example.org/" + id.String(), Serial: [16]byte{1, reqID},
		NotBefore: uint64(now.Unix()), NotAfter: uint64(now.Add(time.Hour).Unix())}
}

// TestSignerRefusesForeignTBS: a sign request whose TBS is not the
// certificate the signer validated (another key, CA:true, another SPIFFE
// ID, arbitrary bytes) gets no share, and burns the session: the nonces
// never sign anything.
func TestSignerRefusesForeignTBS(t *testing.T) {
	svc, st, req := signerFixture(t, nil)
	rid := req.Identity()
	ca := st.CA
	other := keys(t, 1)[0].Identity()
	for i, forge := range []func(p leafParams) []byte{
		func(p leafParams) []byte { p.Key = other; b, _ := leafTBS(ca, p); return b },
		func(p leafParams) []byte {
			tm := leafTemplate(p)
			tm.IsCA, tm.KeyUsage = true, x509.KeyUsageCertSign
			b, _ := buildTBS(tm, ca.Cert, p.Key.PublicKey(), ca.GroupKey)
			return b
		},
		func(p leafParams) []byte {
			p.NotAfter = p.NotAfter.Add(24 * 365 * time.Hour)
			b, _ := leafTBS(ca, p)
			return b
		},
		func(leafParams) []byte { return []byte("arbitrary bytes to get a CA signature on") },
	} {
		m := csrFor(rid, byte(i+1))
		svc.onCSR(rid, m.encode())
		svc.mu.Lock()
		sess := svc.signer.sessions[sessKey{rid, m.ReqID}]
		svc.mu.Unlock()
		if sess == nil {
			t.Fatalf("case %d: no session", i)
		}
		p, err := checkCSR(ca, rid, &m, time.Now(), time.Hour*24)
		if err != nil {
			t.Fatal(err)
		}
		other := frost.Commit(st.ID%3+1, edwardsOne())
		list := []frost.Commitment{sess.nonces.Commitment(), other.Commitment()}
		frost.SortCommitments(list)
		sr := signReqMsg{ReqID: m.ReqID, Commitments: list, TBS: forge(p)}
		if _, err := svc.HandleRPC(context.Background(), rid, sr.encode()); !errors.Is(err, errTBSMismatch) {
			t.Fatalf("case %d: forged TBS: %v", i, err)
		}
		if !sess.nonces.Used() {
			t.Fatalf("case %d: the refused request left the nonces usable", i)
		}
		// The honest TBS now finds no session: it was burned.
		good, _ := leafTBS(ca, p)
		sr.TBS = good
		if _, err := svc.HandleRPC(context.Background(), rid, sr.encode()); !errors.Is(err, errNoSession) {
			t.Fatalf("case %d: after a refusal: %v", i, err)
		}
	}
	// Another requester cannot use someone's session.
	m := csrFor(rid, 99)
	svc.onCSR(rid, m.encode())
	sr := signReqMsg{ReqID: m.ReqID, Commitments: nil, TBS: nil}
	sr.Commitments = []frost.Commitment{{ID: 1, Hiding: edwardsG(), Binding: edwardsG()}, {ID: 2, Hiding: edwardsG(), Binding: edwardsG()}}
	if _, err := svc.HandleRPC(context.Background(), other, sr.encode()); !errors.Is(err, errNoSession) {
		t.Fatalf("another requester's sign request: %v", err)
	}
}

// TestNonceNeverReused: a second sign request for the same session (the
// same nonces) is refused, so no two signatures ever share a nonce; each
// CSR gets fresh nonces, and a repeated CSR gets the same commitment.
func TestNonceNeverReused(t *testing.T) {
	svc, st, req := signerFixture(t, nil)
	rid := req.Identity()
	m := csrFor(rid, 1)
	svc.onCSR(rid, m.encode())
	svc.mu.Lock()
	sess := svc.signer.sessions[sessKey{rid, m.ReqID}]
	first := sess.commit
	svc.mu.Unlock()
	svc.onCSR(rid, m.encode()) // a republish: same session, same commitment
	svc.mu.Lock()
	again := svc.signer.sessions[sessKey{rid, m.ReqID}].commit
	svc.mu.Unlock()
	if !bytes.Equal(first, again) || svc.Stats().CSRAccepted != 1 {
		t.Fatal("a repeated CSR opened a second session")
	}
	p, _ := checkCSR(st.CA, rid, &m, time.Now(), 24*time.Hour)
	tbs, _ := leafTBS(st.CA, p)
	other := frost.Commit(st.ID%3+1, edwardsOne())
	list := []frost.Commitment{sess.nonces.Commitment(), other.Commitment()}
	frost.SortCommitments(list)
	sr := (&signReqMsg{ReqID: m.ReqID, Commitments: list, TBS: tbs}).encode()
	if _, err := svc.HandleRPC(context.Background(), rid, sr); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.HandleRPC(context.Background(), rid, sr); !errors.Is(err, errNoSession) {
		t.Fatalf("second share from the same nonces: %v", err)
	}
	// A second CSR: different nonces.
	m2 := csrFor(rid, 2)
	svc.onCSR(rid, m2.encode())
	svc.mu.Lock()
	s2 := svc.signer.sessions[sessKey{rid, m2.ReqID}]
	svc.mu.Unlock()
	if s2.nonces.Commitment().Hiding.Equal(sess.nonces.Commitment().Hiding) == 1 {
		t.Fatal("two sessions share a nonce")
	}
}

// TestSignerBoundsAndRate: a requester cannot make a signer hold more
// than MaxSessionsPerRequester sessions, nor open more than
// RequestsPerMinute a minute; sessions expire and their nonces are zeroed.
func TestSignerBoundsAndRate(t *testing.T) {
	svc, _, req := signerFixture(t, func(c *Config) { c.RequestsPerMinute = 6; c.MaxSessionsPerRequester = 4; c.SessionTTL = time.Minute })
	rid := req.Identity()
	for i := 0; i < 50; i++ {
		m := csrFor(rid, byte(i+1))
		svc.onCSR(rid, m.encode())
	}
	st := svc.Stats()
	if st.Sessions != 4 || st.CSRSessionsFull != 46 {
		t.Fatalf("per-requester cap: %+v", st)
	}
	// Expire them; the rate limit then allows 2 more (6 per minute, 4 used).
	svc.mu.Lock()
	var held []*frost.Nonces
	for _, s := range svc.signer.sessions {
		held = append(held, s.nonces)
	}
	n := svc.signer.expire(time.Now().Add(2 * time.Minute))
	svc.mu.Unlock()
	if n != 4 {
		t.Fatalf("expired %d", n)
	}
	for _, h := range held {
		if !h.Used() {
			t.Fatal("expired nonces not zeroed")
		}
	}
	for i := 100; i < 110; i++ {
		m := csrFor(rid, byte(i))
		svc.onCSR(rid, m.encode())
	}
	st = svc.Stats()
	if st.Sessions != 2 || st.CSRRateLimited != 8 {
		t.Fatalf("rate limit: %+v", st)
	}
}

// TestDKGCulpritEquivocation: a signer that sends two different round-1
// messages is named by the one that sees both; one whose echo differs
// aborts the run naming the signer whose message differs.
func TestDKGCulpritEquivocation(t *testing.T) {
	kps := keys(t, 3)
	now := time.Now
	mk := func(i int) *dkgRun {
		r, err := newDKGRun(DKGConfig{TrustDomain: "td", Threshold: 2, Signers: ids(kps)}, kps[i].Identity(), now)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := mk(0), mk(1)
	b2 := mk(1) // b's second, different round 1
	if err := a.onRound1(kps[1].Identity(), b.own); err != nil {
		t.Fatal(err)
	}
	err := a.onRound1(kps[1].Identity(), b2.own)
	var ae *AbortError
	if !errors.As(err, &ae) || ae.Culprit != kps[1].Identity() {
		t.Fatalf("equivocation: %v", err)
	}
	// Echo: c got b2 while a got b; c's round-2 echo tells a.
	a = mk(0)
	c := mk(2)
	for _, x := range []struct {
		r    *dkgRun
		from int
		raw  []byte
	}{{a, 1, b.own}, {a, 2, c.own}, {c, 0, a.own}, {c, 1, b2.own}} {
		if err := x.r.onRound1(kps[x.from].Identity(), x.raw); err != nil {
			t.Fatal(err)
		}
	}
	err = a.onDKGShare(kps[2].Identity(), c.out2[a.myID])
	if err == nil { // a needs b's round 2 too before it compares
		bb := mk(1)
		bb.onRound1(kps[0].Identity(), a.own)
		bb.onRound1(kps[2].Identity(), c.own)
		err = a.onDKGShare(kps[1].Identity(), bb.out2[a.myID])
	}
	if !errors.As(err, &ae) || ae.Culprit != kps[1].Identity() || !strings.Contains(err.Error(), "different round-1 messages") {
		t.Fatalf("echo mismatch: %v", err)
	}
}

// TestDKGConfigRefused: the parameters a ceremony refuses.
func TestDKGConfigRefused(t *testing.T) {
	kps := keys(t, 4)
	self := kps[0].Identity()
	for name, c := range map[string]DKGConfig{
		"two signers":     {TrustDomain: "td", Threshold: 2, Signers: ids(kps[:2])},
		"threshold 1":     {TrustDomain: "td", Threshold: 1, Signers: ids(kps)},
		"threshold > n":   {TrustDomain: "td", Threshold: 5, Signers: ids(kps)},
		"not a signer":    {TrustDomain: "td", Threshold: 2, Signers: ids(kps[1:])},
		"duplicate":       {TrustDomain: "td", Threshold: 2, Signers: append(ids(kps[:3]), self)},
		"bad domain":      {TrustDomain: "TD!", Threshold: 2, Signers: ids(kps)},
		"no trust domain": {Threshold: 2, Signers: ids(kps)},
	} {
		if _, err := newDKGRun(c, self, time.Now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestStateFile: the state round-trips through its encrypted file, which
// is 0600; another node's key, a flipped byte or a truncation is refused;
// an existing file is not overwritten.
func TestStateFile(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 3)
	states := runDKG(t, net, kps, 2, "td")
	dir := t.TempDir()
	path := filepath.Join(dir, "signer.state")
	if err := SaveState(path, states[0], kps[0]); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if err := SaveState(path, states[0], kps[0]); !errors.Is(err, pki.ErrFileExists) {
		t.Fatalf("overwrite: %v", err)
	}
	got, err := LoadState(path, kps[0])
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != states[0].ID || got.Secret.Equal(states[0].Secret) != 1 || !bytes.Equal(got.CA.DER, states[0].CA.DER) {
		t.Fatal("state did not round-trip")
	}
	if _, err := LoadState(path, kps[1]); !errors.Is(err, ErrStateKey) {
		t.Fatalf("another node's key: %v", err)
	}
	data, _ := os.ReadFile(path)
	for _, i := range []int{0, 6, len(data) / 2, len(data) - 1} {
		bad := append([]byte(nil), data...)
		bad[i] ^= 0x40
		if _, err := DecodeState(bad, kps[0]); err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	if _, err := DecodeState(data[:len(data)-1], kps[0]); err == nil {
		t.Fatal("truncated accepted")
	}
	os.Chmod(path, 0o644)
	if _, err := LoadState(path, kps[0]); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("readable by others: %v", err)
	}
	// A restarted signer (state from the file) still signs.
	os.Chmod(path, 0o600)
	net2 := newMemNet()
	for i, kp := range kps {
		st := got
		if i > 0 {
			st = states[i]
		}
		net2.add(t, kp, st, nil)
	}
	r := net2.add(t, keys(t, 1)[0], nil, nil)
	approve(t, net2, kps, r.id, "")
	if _, err := r.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "td"}); err != nil {
		t.Fatal(err)
	}
}

// TestTwoCAsNeedAPin: when two CAs answer for one trust domain the
// requester refuses to choose unless pinned.
func TestTwoCAsNeedAPin(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 7)
	a := runDKG(t, net, kps[:3], 2, "td")
	b := runDKG(t, net, kps[3:6], 2, "td")
	for i, st := range append(a, b...) {
		net.nodes[kps[i].Identity()].svc.SetSigner(st, "")
	}
	r := net.add(t, kps[6], nil, nil)
	approve(t, net, kps[:6], r.id, "")
	_, err := r.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "td", Attempts: 1})
	if err == nil || !strings.Contains(err.Error(), "different CAs") {
		// The second CA's commitments may come after the first reached K.
		t.Logf("without a pin: %v", err)
	}
	cert, err := r.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "td", CAKey: b[0].CA.GroupKey})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.CA.GroupKey, b[0].CA.GroupKey) {
		t.Fatal("pin ignored")
	}
}

func TestMessageCounts(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 6)
	start := time.Now()
	states := runDKG(t, net, kps[:5], 3, "example.org")
	dkg := time.Since(start)
	calls, pubs := net.calls.Load(), net.pubs.Load()
	for i, st := range states {
		net.nodes[kps[i].Identity()].svc.SetSigner(st, "")
	}
	req := net.add(t, kps[5], nil, nil)
	approve(t, net, kps[:5], kps[5].Identity(), "")
	net.calls.Store(0)
	t.Logf("DKG RPCs by type: %v", net.byType)
	net.byType = nil
	start = time.Now()
	if _, err := req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("signing RPCs by type: %v", net.byType)
	fmt.Printf("in-memory 3-of-5: DKG %v, %d RPCs, %d broadcasts; signing %v, %d RPCs\n", dkg.Round(time.Millisecond), calls, pubs, time.Since(start).Round(time.Millisecond), net.calls.Load())
}

// approve makes every signer of kps approve id with workload wl.
func approve(t testing.TB, net *memNet, kps []*pki.Keypair, id pki.Identity, wl string) {
	t.Helper()
	for _, kp := range kps {
		if _, err := net.nodes[kp.Identity()].svc.Approve(id, wl); err != nil {
			t.Fatal(err)
		}
	}
}

func edwardsOne() *edwards25519.Scalar {
	b := [32]byte{1}
	s, _ := new(edwards25519.Scalar).SetCanonicalBytes(b[:])
	return s
}

func edwardsG() *edwards25519.Point { return edwards25519.NewGeneratorPoint() }

// approvalFixture is a 2-of-3 CA whose signers run, and a requester that
// knows the CA (as a member configured with --ca-cert does).
func approvalFixture(t *testing.T, tune func(*Config)) (*memNet, []*pki.Keypair, *CA, *memNode) {
	t.Helper()
	net := newMemNet()
	kps := keys(t, 4)
	states := runDKG(t, net, kps[:3], 2, "example.org")
	for i, st := range states {
		if err := net.nodes[kps[i].Identity()].svc.SetSigner(st, ""); err != nil {
			t.Fatal(err)
		}
	}
	// A requester whose nonce is not 0: the leaf must carry it.
	var err error
	if kps[3], err = pki.NewKeypair(kps[3].Seed(), 12345); err != nil {
		t.Fatal(err)
	}
	return net, kps, states[0].CA, net.add(t, kps[3], nil, tune)
}

// TestKMinus1ApprovalsGetNoCertificate: approved by only one of the two
// signers needed, a request fails at once (not after CommitWait) with an
// error that says how many approved and names the others; no signer gave a
// share. Approved by a second signer, it succeeds; revoked on two, the
// renewal fails again.
func TestKMinus1ApprovalsGetNoCertificate(t *testing.T) {
	net, kps, ca, req := approvalFixture(t, func(c *Config) { c.CommitWait = 20 * time.Second })
	rid := req.id
	approve(t, net, kps[:1], rid, "")
	start := time.Now()
	_, err := req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org", CA: ca, Attempts: 1})
	took := time.Since(start)
	if !errors.Is(err, ErrNotApproved) || !strings.Contains(err.Error(), "1 of the 2 signers needed (of 3) approved") {
		t.Fatalf("K-1 approvals: %v", err)
	}
	for _, kp := range kps[1:3] {
		if !strings.Contains(err.Error(), kp.Identity().Short()) {
			t.Fatalf("the error does not name %s: %v", kp.Identity().Short(), err)
		}
	}
	if took > 10*time.Second {
		t.Fatalf("took %v: the refusals should end the request before CommitWait", took)
	}
	for _, kp := range kps[:3] {
		if st := net.nodes[kp.Identity()].svc.Stats(); st.SharesSigned != 0 {
			t.Fatalf("signer %s gave a share: %+v", kp.Identity().Short(), st)
		}
	}
	if st := net.nodes[kps[1].Identity()].svc.Stats(); st.CSRNotApproved == 0 {
		t.Fatalf("refusal not counted: %+v", st)
	}
	t.Logf("K-1 approvals (in %v): %v", took.Round(time.Millisecond), err)

	approve(t, net, kps[1:2], rid, "")
	cert, err := req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org", CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	// The leaf carries the requester's proof-of-work nonce, so it passes
	// the handshake's check when presented.
	if cert.Leaf.Subject.SerialNumber != pki.PoWSerialNumber(kps[3].Nonce()) {
		t.Fatalf("leaf subject %q", cert.Leaf.Subject)
	}
	if _, _, err := pki.LeafCertificate(kps[3], cert.DER); err != nil {
		t.Fatal(err)
	}
	for _, kp := range kps[:2] {
		if err := net.nodes[kp.Identity()].svc.Revoke(rid); err != nil {
			t.Fatal(err)
		}
	}
	if err := net.nodes[kps[0].Identity()].svc.Revoke(rid); err == nil {
		t.Fatal("revoking twice succeeded")
	}
	_, err = req.svc.RequestCertificate(context.Background(), RequestConfig{TrustDomain: "example.org", CA: ca, Attempts: 1})
	if !errors.Is(err, ErrNotApproved) || !strings.Contains(err.Error(), "0 of the 2 signers needed") {
		t.Fatalf("after revocation on 2: %v", err)
	}
}

// TestRevokedBetweenCSRAndSignRequest: a signer revokes while a session is
// open; the sign request then gets no share and burns the nonces.
func TestRevokedBetweenCSRAndSignRequest(t *testing.T) {
	svc, st, req := signerFixture(t, nil)
	rid := req.Identity()
	m := csrFor(rid, 1)
	if _, err := svc.HandleRPC(context.Background(), rid, m.encode()); err != nil {
		t.Fatal(err)
	}
	svc.mu.Lock()
	sess := svc.signer.sessions[sessKey{rid, m.ReqID}]
	svc.mu.Unlock()
	if sess == nil {
		t.Fatal("no session for an approved CSR")
	}
	if err := svc.Revoke(rid); err != nil {
		t.Fatal(err)
	}
	other := frost.Commit(st.ID%3+1, edwardsOne())
	list := []frost.Commitment{sess.nonces.Commitment(), other.Commitment()}
	frost.SortCommitments(list)
	sr := (&signReqMsg{ReqID: m.ReqID, Commitments: list, TBS: sess.tbs}).encode()
	if _, err := svc.HandleRPC(context.Background(), rid, sr); !errors.Is(err, errUnapproved) {
		t.Fatalf("sign request after revocation: %v", err)
	}
	if !sess.nonces.Used() {
		t.Fatal("nonces left usable")
	}
	// A CSR by RPC now gets a refusal that says why.
	m2 := csrFor(rid, 2)
	resp, err := svc.HandleRPC(context.Background(), rid, m2.encode())
	if err != nil {
		t.Fatal(err)
	}
	ref, err := decodeRefusal(resp)
	if err != nil || ref.Reason != refuseNotApproved || !strings.Contains(ref.Text, "not approved") {
		t.Fatalf("refusal %+v, %v", ref, err)
	}
}

// TestApprovalWorkload: an approval names the one workload path signed.
func TestApprovalWorkload(t *testing.T) {
	svc, _, req := signerFixture(t, nil)
	rid := req.Identity()
	if _, err := svc.Approve(rid, "api"); err != nil {
		t.Fatal(err)
	}
	m := csrFor(rid, 1) // no workload
	resp, _ := svc.HandleRPC(context.Background(), rid, m.encode())
	if ref, err := decodeRefusal(resp); err != nil || ref.Reason != refuseNotApproved || !strings.Contains(ref.Text, "another workload") {
		t.Fatalf("bare ID with an approval for /api: %v %v", ref, err)
	}
	m.SPIFFEID += "/api"
	m.ReqID[0] = 2
	resp, _ = svc.HandleRPC(context.Background(), rid, m.encode())
	if MessageType(resp) != msgCommitment {
		t.Fatalf("approved workload: type %d", MessageType(resp))
	}
	if _, err := svc.Approve(rid, "a/../b"); err == nil {
		t.Fatal("a bad workload path was approved")
	}
}

// TestApprovalsPersisted: approvals survive a restart through their file
// (mode 0600, rewritten atomically); a corrupt or world-readable file is
// refused with a clear error; the list is bounded.
func TestApprovalsPersisted(t *testing.T) {
	net := newMemNet()
	kps := keys(t, 5)
	states := runDKG(t, net, kps[:3], 2, "td")
	path := filepath.Join(t.TempDir(), "s.approvals")
	svc := net.nodes[kps[0].Identity()].svc
	if err := svc.SetSigner(states[0], path); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Approve(kps[3].Identity(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Approve(kps[4].Identity(), "web"); err != nil {
		t.Fatal(err)
	}
	if err := svc.Revoke(kps[3].Identity()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("approvals file: %v %v", fi, err)
	}
	a, err := loadApprovals(path)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := a.approved(kps[4].Identity(), "/web"); !ok || len(a.m) != 1 {
		t.Fatalf("reloaded: %+v", a.m)
	}
	restarted := newMemNet().add(t, kps[0], states[0], func(c *Config) { c.ApprovalsFile = path }).svc
	if list, _ := restarted.Approvals(); len(list) != 1 || list[0].Identity != kps[4].Identity() || list[0].Workload != "/web" {
		t.Fatalf("after restart: %+v", list)
	}
	os.WriteFile(path, []byte("korium-tun approvals v1\nnot-an-identity 5\n"), 0o600)
	if _, err := loadApprovals(path); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("corrupt file: %v", err)
	}
	os.Chmod(path, 0o644)
	if _, err := loadApprovals(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable file: %v", err)
	}
	full := &approvals{m: map[pki.Identity]Approval{}}
	for i := 0; i < MaxApprovals; i++ {
		var id pki.Identity
		id[0], id[1] = byte(i), byte(i>>8)
		full.m[id] = Approval{Identity: id}
	}
	if _, err := full.approve(kps[3].Identity(), "", time.Now()); err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("over the cap: %v", err)
	}
	if _, err := (&Service{}).Approve(kps[3].Identity(), ""); !errors.Is(err, errNotSigner) {
		t.Fatalf("approve on a non-signer: %v", err)
	}
}

// TestEnrollmentServesOnlyTheRequest: an enrollee (a node that is not yet a
// member) gets answers to a CSR and a sign request only; DKG shares,
// commitments and anything else are refused and counted.
func TestEnrollmentServesOnlyTheRequest(t *testing.T) {
	svc, _, req := signerFixture(t, nil)
	rid := req.Identity()
	m := csrFor(rid, 1)
	resp, err := svc.HandleEnrollment(context.Background(), rid, m.encode())
	if err != nil || MessageType(resp) != msgCommitment {
		t.Fatalf("an enrollee's CSR: %v type %d", err, MessageType(resp))
	}
	for _, ss := range seedMessages(t) {
		for _, b := range ss {
			switch MessageType(b) {
			case msgCSR, msgSignReq:
				continue
			}
			if _, err := svc.HandleEnrollment(context.Background(), rid, b); !errors.Is(err, ErrEnrollee) {
				t.Fatalf("type %d from an enrollee: %v", MessageType(b), err)
			}
		}
	}
	if st := svc.Stats(); st.EnrolleeRefused < 5 {
		t.Fatalf("enrollee refusals not counted: %+v", st)
	}
}
