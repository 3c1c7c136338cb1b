package overlay

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/rpc"
)

// caCluster starts n in-process nodes over loopback UDP, each
// bootstrapped from the first, with the DHT and pubsub, and a trust domain.
func caCluster(t *testing.T, n int) []*Node {
	t.Helper()
	var nodes []*Node
	for i := 0; i < n; i++ {
		kp, err := pki.GenerateKeypair(context.Background(), testPoW)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: newMemDevice(), Logger: testLogger(t),
			DHT: dhtConfigForOneHost(), TrustDomain: "mesh.example", CA: tca.Config{Republish: 500 * time.Millisecond, CommitWait: 10 * time.Second}}
		if i > 0 {
			cfg.Bootstrap = []Contact{nodes[0].Contact(netip.MustParseAddr("127.0.0.1"))}
		}
		nd, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		nodes = append(nodes, nd)
	}
	return nodes
}

// TestThresholdCAOverNodes: five real nodes run a 3-of-5 DKG over gossip
// and RPC; a sixth gets an X509-SVID that verifies (crypto/x509 and
// go-spiffe's x509svid.Verify) and names it; with 2 signers closed it
// still gets one; with 3 closed it fails with an error naming the silent
// signers. Prints the figures.
func TestThresholdCAOverNodes(t *testing.T) {
	nodes := caCluster(t, 6)
	signers, req := nodes[:5], nodes[5]
	var ids []pki.Identity
	for _, s := range signers {
		ids = append(ids, s.Identity())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	results := make([]*tca.DKGResult, len(signers))
	errs := make([]error, len(signers))
	var wg sync.WaitGroup
	start := time.Now()
	for i, s := range signers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = s.RunCADKG(ctx, tca.DKGConfig{TrustDomain: "mesh.example", Threshold: 3, Signers: ids})
		}()
	}
	wg.Wait()
	dkgTime := time.Since(start)
	var msgs tca.DKGMessages
	for i, err := range errs {
		if err != nil {
			t.Fatalf("signer %d: %v", i, err)
		}
		if !bytes.Equal(results[i].State.CA.DER, results[0].State.CA.DER) {
			t.Fatal("signers disagree on the CA certificate")
		}
		m := results[i].Messages
		msgs.Round1Published += m.Round1Published
		msgs.SharesSent += m.SharesSent
		msgs.CASharesSent += m.CASharesSent
	}
	ca := results[0].State.CA
	for i, s := range signers {
		if err := s.SetCASigner(results[i].State, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CAApprove(req.Identity(), "web"); err != nil {
			t.Fatal(err)
		}
	}
	// The requester's peers show their SPIFFE IDs.
	waitFor(t, "a peer's spiffe_id in status", 10*time.Second, func() bool {
		for _, p := range req.Status().Peers {
			if p.SPIFFEID == "spiffe://mesh.example/"+p.Identity {
				return true
			}
		}
		return false
	})

	start = time.Now()
	cert, err := req.RequestCACertificate(ctx, tca.RequestConfig{Workload: "web"})
	if err != nil {
		t.Fatal(err)
	}
	signTime := time.Since(start)
	bundle := x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
	sid, _, err := x509svid.Verify([]*x509.Certificate{cert.Leaf}, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://mesh.example/" + req.Identity().String() + "/web"; sid.String() != want {
		t.Fatalf("SPIFFE ID %s, want %s", sid, want)
	}
	fmt.Printf("3-of-5 over 5 real nodes: DKG %v (round-1 broadcasts %d, round-2 RPCs %d, CA-share RPCs %d); certificate in %v\n",
		dkgTime.Round(time.Millisecond), msgs.Round1Published, msgs.SharesSent, msgs.CASharesSent, signTime.Round(time.Millisecond))

	signers[0].Close()
	signers[1].Close()
	start = time.Now()
	if _, err := req.RequestCACertificate(ctx, tca.RequestConfig{Workload: "web"}); err != nil {
		t.Fatalf("2 of 5 signers offline: %v", err)
	}
	fmt.Printf("with 2 of 5 signers offline: certificate in %v\n", time.Since(start).Round(time.Millisecond))
	signers[2].Close()
	_, err = req.RequestCACertificate(ctx, tca.RequestConfig{Workload: "web", Attempts: 2})
	if !errors.Is(err, tca.ErrNotEnoughSigners) || !strings.Contains(err.Error(), "of the 3 signers needed") {
		t.Fatalf("3 of 5 offline: %v", err)
	}
	t.Logf("3 of 5 offline: %v", err)
}

// TestCACorruptShareOverNodes: one signer's node returns corrupt signature
// shares (its ProtoCA answers are altered on the wire); the requester names
// it and completes with another 3. A CSR naming another identity is
// refused by every signer.
func TestCACorruptShareOverNodes(t *testing.T) {
	nodes := caCluster(t, 6)
	signers, req := nodes[:5], nodes[5]
	var ids []pki.Identity
	for _, s := range signers {
		ids = append(ids, s.Identity())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	states := make([]*tca.SignerState, 5)
	var wg sync.WaitGroup
	for i, s := range signers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.RunCADKG(ctx, tca.DKGConfig{TrustDomain: "mesh.example", Threshold: 3, Signers: ids})
			if err != nil {
				t.Error(err)
				return
			}
			states[i] = r.State
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i, s := range signers {
		s.SetCASigner(states[i], "")
		s.CAApprove(req.Identity(), "")
	}
	liar := signers[2]
	liar.rpc.Handle(rpc.ProtoCA, func(ctx context.Context, from pki.Identity, r []byte) ([]byte, error) {
		resp, err := liar.ca.HandleRPC(ctx, from, r)
		if err == nil && tca.MessageType(resp) == 8 { // a signature share
			resp = append([]byte(nil), resp...)
			resp[2] ^= 1
		}
		return resp, err
	})
	// Commitments from signers 0 and 1 reach the requester late (as an
	// answer to its CSR by RPC, or sent after the CSR by gossip), so the
	// first three it hears (and asks) include the liar.
	slow := map[pki.Identity]bool{signers[0].Identity(): true, signers[1].Identity(): true}
	for _, s := range signers[:2] {
		s.rpc.Handle(rpc.ProtoCA, func(ctx context.Context, from pki.Identity, r []byte) ([]byte, error) {
			if tca.MessageType(r) == 5 { // a CSR
				time.Sleep(time.Second)
			}
			return s.ca.HandleRPC(ctx, from, r)
		})
	}
	req.rpc.Handle(rpc.ProtoCA, func(ctx context.Context, from pki.Identity, r []byte) ([]byte, error) {
		if slow[from] && tca.MessageType(r) == 6 {
			time.Sleep(time.Second)
		}
		return req.ca.HandleRPC(ctx, from, r)
	})
	cert, err := req.RequestCACertificate(ctx, tca.RequestConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if why := cert.Excluded[liar.Identity()]; cert.Attempts != 2 || !strings.Contains(why, "does not verify") {
		t.Fatalf("attempts %d, excluded %v: the liar was not named", cert.Attempts, cert.Excluded)
	}
	for _, s := range cert.Signers {
		if s == liar.Identity() {
			t.Fatal("the liar's share is in the certificate")
		}
	}
	t.Logf("liar named and excluded; signed by %d others in attempt %d", len(cert.Signers), cert.Attempts)

	// With two honest signers gone the liar is among the only three: the
	// request fails, naming it.
	signers[0].Close()
	signers[1].Close()
	_, err = req.RequestCACertificate(ctx, tca.RequestConfig{Attempts: 2})
	if err == nil || !strings.Contains(err.Error(), liar.Identity().Short()) || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("the liar was not named: %v", err)
	}
	t.Logf("with the liar among the only 3: %v", err)

	// A CSR from req naming another identity (published raw on csr).
	before, accepted := signers[3].CAStats().CSRRefused, signers[3].CAStats().CSRAccepted
	forged := forgedCSR(t, "spiffe://mesh.example/"+signers[4].Identity().String())
	waitFor(t, "csr topic peers", 10*time.Second, func() bool { return len(req.TopicPeers(tca.TopicCSR)) > 0 })
	deadline := time.Now().Add(15 * time.Second)
	for signers[3].CAStats().CSRRefused == before {
		if time.Now().After(deadline) {
			t.Fatal("the forged CSR was never refused")
		}
		req.Publish(tca.TopicCSR, forged)
		time.Sleep(200 * time.Millisecond)
	}
	if st := signers[3].CAStats(); st.CSRAccepted != accepted {
		t.Fatalf("a session opened for a forged CSR: %+v", st)
	}
}

// forgedCSR encodes a CSR with the given SPIFFE ID (version 1, type 5).
func forgedCSR(t *testing.T, spiffeID string) []byte {
	t.Helper()
	b := []byte{1, 5}
	b = append(b, make([]byte, 16)...)
	b = append(b, byte(len(spiffeID)>>8), byte(len(spiffeID)))
	b = append(b, spiffeID...)
	serial := make([]byte, 16)
	serial[0] = 1
	b = append(b, serial...)
	now := uint64(time.Now().Unix())
	for _, v := range []uint64{now, now + 3600} {
		for i := 7; i >= 0; i-- {
			b = append(b, byte(v>>(8*i)))
		}
	}
	return b
}
