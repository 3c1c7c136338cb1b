package tca

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/frost"
)

// Fuzz targets for every message the DKG and signing protocols read: each
// decoder must refuse garbage without panicking, and whatever it accepts
// must encode back to the same bytes (one spelling per message).

var (
	seedOnce sync.Once
	seeds    map[byte][][]byte
	seedCA   []byte
	seedKP   *pki.Keypair
	seedSt   []byte
)

func seedMessages(t testing.TB) map[byte][][]byte {
	seedOnce.Do(func() {
		net := newMemNet()
		kps := keys(t, 3)
		var mu sync.Mutex
		seeds = map[byte][][]byte{}
		// Record what crosses the network during a ceremony and a request.
		for _, kp := range kps {
			net.add(t, kp, nil, nil)
		}
		tap := func(b []byte) {
			mu.Lock()
			defer mu.Unlock()
			if len(seeds[MessageType(b)]) < 4 {
				seeds[MessageType(b)] = append(seeds[MessageType(b)], append([]byte(nil), b...))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		states := make([]*SignerState, 3)
		for i, kp := range kps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				nd := net.nodes[kp.Identity()]
				r, err := nd.svc.RunDKG(ctx, DKGConfig{TrustDomain: "td", Threshold: 2, Signers: ids(kps)})
				if err == nil {
					states[i] = r.State
				}
			}()
		}
		wg.Wait()
		run := net.nodes[kps[0].Identity()].svc.dkg
		tap(run.own)
		for _, b := range run.out2 {
			tap(b)
		}
		tap(run.caOut)
		if states[0] == nil {
			t.Fatal("seed DKG failed")
		}
		seedCA = states[0].CA.DER
		seedKP = kps[0]
		seedSt, _ = EncodeState(states[0], kps[0])
		tap((&presenceMsg{CACert: seedCA}).encode())
		m := csrFor(kps[1].Identity(), 1)
		tap(m.encode())
		n := frost.Commit(1, edwardsOne())
		c := n.Commitment()
		tap((&commitmentMsg{ReqID: m.ReqID, ID: 1, Hide: c.Hiding, Bind: c.Binding, CACert: seedCA}).encode())
		n2 := frost.Commit(2, edwardsOne())
		tap((&signReqMsg{ReqID: m.ReqID, Commitments: []frost.Commitment{c, n2.Commitment()}, TBS: []byte("tbs")}).encode())
		tap((&signShareMsg{Z: edwardsOne()}).encode())
		tap((&refusalMsg{ReqID: m.ReqID, Reason: refuseNotApproved, Text: errUnapproved.Error()}).encode())
		tap(EncodeLeafUpdate(seedCA[:200]))
	})
	return seeds
}

type encoder interface{ encode() []byte }

func fuzzDecoder[T encoder](f *testing.F, typ byte, decode func([]byte) (T, error)) {
	for _, s := range seedMessages(f)[typ] {
		f.Add(s)
	}
	f.Add([]byte{wireVersion, typ})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		if got := m.encode(); !bytes.Equal(got, b) {
			t.Fatalf("accepted %x but it encodes as %x", b, got)
		}
	})
}

func FuzzRound1(f *testing.F)     { fuzzDecoder(f, msgRound1, decodeRound1) }
func FuzzDKGShare(f *testing.F)   { fuzzDecoder(f, msgDKGShare, decodeDKGShare) }
func FuzzCAShare(f *testing.F)    { fuzzDecoder(f, msgCAShare, decodeCAShare) }
func FuzzPresence(f *testing.F)   { fuzzDecoder(f, msgPresence, decodePresence) }
func FuzzCSR(f *testing.F)        { fuzzDecoder(f, msgCSR, decodeCSR) }
func FuzzCommitment(f *testing.F) { fuzzDecoder(f, msgCommitment, decodeCommitment) }
func FuzzSignReq(f *testing.F)    { fuzzDecoder(f, msgSignReq, decodeSignReq) }
func FuzzSignShare(f *testing.F)  { fuzzDecoder(f, msgSignShare, decodeSignShare) }
func FuzzRefusal(f *testing.F)    { fuzzDecoder(f, msgRefusal, decodeRefusal) }

// FuzzLeafUpdate: the member's renewed certificate message is bounded and
// has one spelling.
func FuzzLeafUpdate(f *testing.F) {
	for _, s := range seedMessages(f)[MsgLeafUpdate] {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		der, err := DecodeLeafUpdate(b)
		if err != nil {
			return
		}
		if len(der) > MaxLeafSize || !bytes.Equal(EncodeLeafUpdate(der), b) {
			t.Fatalf("accepted %x", b)
		}
	})
}

// FuzzApprovalsFile: the approvals file is parsed without panicking; what
// parses writes back to a file that parses to the same list.
func FuzzApprovalsFile(f *testing.F) {
	kps := keys(f, 2)
	f.Add(encodeApprovals([]Approval{{Identity: kps[0].Identity(), ApprovedAt: time.Unix(1700000000, 0)}, {Identity: kps[1].Identity(), Workload: "/a/b", ApprovedAt: time.Unix(5, 0)}}))
	f.Add([]byte(approvalsHeader + "\n"))
	f.Add([]byte(approvalsHeader + "\nzz 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeApprovals(b)
		if err != nil {
			return
		}
		a := &approvals{m: m}
		again, err := decodeApprovals(encodeApprovals(a.listLocked()))
		if err != nil || len(again) != len(m) {
			t.Fatalf("re-encoded list does not parse: %v", err)
		}
		for id, ap := range m {
			if again[id] != ap {
				t.Fatalf("%v became %v", ap, again[id])
			}
		}
	})
}

// FuzzParseCA: a CA certificate from the network (presence, commitments)
// is parsed without panicking, and only self-consistent ones pass.
func FuzzParseCA(f *testing.F) {
	seedMessages(f)
	f.Add(seedCA)
	f.Fuzz(func(t *testing.T, der []byte) {
		ca, err := ParseCA(der)
		if err != nil {
			return
		}
		if ca.Cert.CheckSignatureFrom(ca.Cert) != nil || len(ca.Signers) < 3 || ca.Threshold < 2 || ca.Threshold > len(ca.Signers) {
			t.Fatal("accepted an inconsistent CA")
		}
	})
}

// FuzzDecodeState: a state file is refused unless it decrypts, and a
// decrypted one is consistent.
func FuzzDecodeState(f *testing.F) {
	seedMessages(f)
	f.Add(seedSt)
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := DecodeState(b, seedKP)
		if err != nil {
			return
		}
		if st.check() != nil {
			t.Fatal("accepted an inconsistent state")
		}
	})
}

// FuzzHandleRPC: whatever a peer sends on ProtoCA, a signer with a DKG
// behind it and a request in flight answers or refuses without panicking.
func FuzzHandleRPC(f *testing.F) {
	for _, ss := range seedMessages(f) {
		for _, s := range ss {
			f.Add(s)
		}
	}
	net := newMemNet()
	kps := keys(f, 1)
	st, _ := DecodeState(seedSt, seedKP)
	svc := net.add(f, seedKP, st, nil).svc
	from := kps[0].Identity()
	f.Fuzz(func(t *testing.T, b []byte) {
		svc.HandleRPC(context.Background(), from, b)
		svc.HandleEnrollment(context.Background(), from, b)
		svc.onCSR(from, b)
		svc.onPresence(from, b)
		svc.onRound1(from, b)
	})
}
