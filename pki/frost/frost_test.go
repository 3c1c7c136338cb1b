package frost

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"testing"

	"filippo.io/edwards25519"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func scalarHex(t testing.TB, s string) *edwards25519.Scalar {
	t.Helper()
	x, err := DecodeScalar(unhex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func pointHex(t testing.TB, s string) *edwards25519.Point {
	t.Helper()
	p, err := DecodePoint(unhex(t, s))
	if err != nil {
		t.Fatalf("point %s: %v", s, err)
	}
	return p
}

type rfcVectors struct {
	Inputs struct {
		ParticipantList   []uint16 `json:"participant_list"`
		GroupSecretKey    string   `json:"group_secret_key"`
		VerifyingKey      string   `json:"verifying_key_key"`
		Message           string   `json:"message"`
		ShareCoefficients []string `json:"share_polynomial_coefficients"`
		ParticipantShares []struct {
			ID    uint16 `json:"identifier"`
			Share string `json:"participant_share"`
		} `json:"participant_shares"`
	} `json:"inputs"`
	RoundOne struct {
		Outputs []struct {
			ID                 uint16 `json:"identifier"`
			HidingRandomness   string `json:"hiding_nonce_randomness"`
			BindingRandomness  string `json:"binding_nonce_randomness"`
			HidingNonce        string `json:"hiding_nonce"`
			BindingNonce       string `json:"binding_nonce"`
			HidingCommitment   string `json:"hiding_nonce_commitment"`
			BindingCommitment  string `json:"binding_nonce_commitment"`
			BindingFactorInput string `json:"binding_factor_input"`
			BindingFactor      string `json:"binding_factor"`
		} `json:"outputs"`
	} `json:"round_one_outputs"`
	RoundTwo struct {
		Outputs []struct {
			ID    uint16 `json:"identifier"`
			Share string `json:"sig_share"`
		} `json:"outputs"`
	} `json:"round_two_outputs"`
	Final struct {
		Sig string `json:"sig"`
	} `json:"final_output"`
}

// TestRFC9591Vectors checks RFC 9591 Appendix E.1, FROST(Ed25519,
// SHA-512), 2-of-3 signing of "test" by participants 1 and 3: the shares
// of the dealer's polynomial, nonces, commitments, binding factors,
// signature shares, the aggregate, and that crypto/ed25519 accepts it.
func TestRFC9591Vectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/ed25519-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v rfcVectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	in := v.Inputs
	group := pointHex(t, in.VerifyingKey)
	secret := scalarHex(t, in.GroupSecretKey)
	if !bytes.Equal(new(edwards25519.Point).ScalarBaseMult(secret).Bytes(), group.Bytes()) {
		t.Fatal("group secret does not match the verifying key")
	}
	// The trusted dealer's shares: f(x) = secret + a1*x.
	coeffs := []*edwards25519.Scalar{secret, scalarHex(t, in.ShareCoefficients[0])}
	verifying := map[uint16]*edwards25519.Point{}
	keys := map[uint16]*KeyShare{}
	for _, ps := range in.ParticipantShares {
		s := evalPoly(coeffs, ps.ID)
		if hex.EncodeToString(s.Bytes()) != ps.Share {
			t.Fatalf("share %d = %x, want %s", ps.ID, s.Bytes(), ps.Share)
		}
		verifying[ps.ID] = new(edwards25519.Point).ScalarBaseMult(s)
		keys[ps.ID] = &KeyShare{ID: ps.ID, Threshold: 2, Secret: s, Group: group, Verifying: verifying}
	}
	msg := unhex(t, in.Message)
	nonces := map[uint16]*Nonces{}
	var list []Commitment
	for _, o := range v.RoundOne.Outputs {
		n := commitWith(o.ID, keys[o.ID].Secret, unhex(t, o.HidingRandomness), unhex(t, o.BindingRandomness))
		if got := hex.EncodeToString(n.hiding.Bytes()); got != o.HidingNonce {
			t.Fatalf("hiding nonce %d = %s, want %s", o.ID, got, o.HidingNonce)
		}
		if got := hex.EncodeToString(n.binding.Bytes()); got != o.BindingNonce {
			t.Fatalf("binding nonce %d = %s, want %s", o.ID, got, o.BindingNonce)
		}
		c := n.Commitment()
		if hex.EncodeToString(c.Hiding.Bytes()) != o.HidingCommitment || hex.EncodeToString(c.Binding.Bytes()) != o.BindingCommitment {
			t.Fatalf("commitment %d differs", o.ID)
		}
		nonces[o.ID] = n
		list = append(list, c)
	}
	SortCommitments(list)
	rhos, _ := bindingFactors(group, list, msg)
	for _, o := range v.RoundOne.Outputs {
		if got := hex.EncodeToString(rhos[o.ID].Bytes()); got != o.BindingFactor {
			t.Fatalf("binding factor %d = %s, want %s", o.ID, got, o.BindingFactor)
		}
	}
	shares := map[uint16]*edwards25519.Scalar{}
	for _, o := range v.RoundTwo.Outputs {
		z, err := Sign(keys[o.ID], nonces[o.ID], msg, list)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(z.Bytes()); got != o.Share {
			t.Fatalf("signature share %d = %s, want %s", o.ID, got, o.Share)
		}
		shares[o.ID] = z
	}
	sig, err := Aggregate(group, verifying, 2, msg, list, shares)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(sig); got != v.Final.Sig {
		t.Fatalf("signature = %s, want %s", got, v.Final.Sig)
	}
	if !ed25519.Verify(group.Bytes(), msg, sig) {
		t.Fatal("crypto/ed25519 refuses the aggregated signature")
	}
	// The nonces are spent: signing again with them fails.
	if _, err := Sign(keys[1], nonces[1], msg, list); !errors.Is(err, ErrNonceUsed) {
		t.Fatalf("second Sign with the same nonces: %v, want ErrNonceUsed", err)
	}
}

type dkgParticipant struct {
	ID              uint16            `json:"identifier"`
	SigningKey      string            `json:"signing_key"`
	Coefficient     string            `json:"coefficient"`
	Commitments     []string          `json:"vss_commitments"`
	ProofOfKnowlede string            `json:"proof_of_knowledge"`
	Secret          string            `json:"secret"`
	SigningShares   map[string]string `json:"signing_shares"`
	VerifyingShare  string            `json:"verifying_share"`
	SigningShare    string            `json:"signing_share"`
}

// TestDKGVectors checks the Zcash Foundation's frost-ed25519 DKG run
// (2-of-3): every participant's commitments, proof of knowledge (theirs
// verifies with our challenge hash), round-2 shares, final signing share,
// verifying share and the group key.
func TestDKGVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/ed25519-vectors_dkg.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Inputs map[string]json.RawMessage `json:"inputs"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	var groupHex string
	json.Unmarshal(v.Inputs["verifying_key"], &groupHex)
	const n, th = 3, 2
	secrets := map[uint16]*Round1Secret{}
	pkgs := map[uint16]*Round1Package{}
	var ps [n + 1]dkgParticipant
	for i := 1; i <= n; i++ {
		if err := json.Unmarshal(v.Inputs[strconv.Itoa(i)], &ps[i]); err != nil {
			t.Fatal(err)
		}
		p := ps[i]
		// "signing_key" is the constant coefficient and "coefficient" the
		// next; the proof's nonce is not in the vectors, so our proof
		// differs and theirs is verified below.
		coeffs := []*edwards25519.Scalar{scalarHex(t, p.SigningKey), scalarHex(t, p.Coefficient)}
		sec, pkg, err := dkgRound1With(p.ID, th, n, coeffs, randomScalar())
		if err != nil {
			t.Fatal(err)
		}
		for k, c := range pkg.Commitments {
			if hex.EncodeToString(c.Bytes()) != p.Commitments[k] {
				t.Fatalf("participant %d commitment %d = %x, want %s", p.ID, k, c.Bytes(), p.Commitments[k])
			}
		}
		if err := VerifyRound1(p.ID, th, pkg); err != nil {
			t.Fatal(err)
		}
		// The vector's proof decodes and verifies as received.
		proof := unhex(t, p.ProofOfKnowlede)
		got := &Round1Package{Commitments: []*edwards25519.Point{pointHex(t, p.Commitments[0]), pointHex(t, p.Commitments[1])},
			ProofR: pointHex(t, hex.EncodeToString(proof[:32])), ProofZ: scalarHex(t, hex.EncodeToString(proof[32:]))}
		if err := VerifyRound1(p.ID, th, got); err != nil {
			t.Fatal(err)
		}
		// The proof is bound to the sender's identifier.
		if err := VerifyRound1(p.ID%3+1, th, got); !errors.Is(err, ErrBadProof) {
			t.Fatalf("proof accepted under another identifier: %v", err)
		}
		secrets[p.ID], pkgs[p.ID] = sec, pkg
	}
	for i := uint16(1); i <= n; i++ {
		shares := map[uint16]*edwards25519.Scalar{}
		for from := uint16(1); from <= n; from++ {
			shares[from] = secrets[from].Share(i)
		}
		// A participant's "signing_shares" are those it received.
		for from, want := range ps[i].SigningShares {
			id, _ := strconv.Atoi(from)
			if got := hex.EncodeToString(shares[uint16(id)].Bytes()); got != want {
				t.Fatalf("share %d->%d = %s, want %s", id, i, got, want)
			}
		}
		key, err := DKGFinalize(secrets[i], pkgs, shares)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(key.Secret.Bytes()) != ps[i].SigningShare {
			t.Fatalf("participant %d signing share = %x, want %s", i, key.Secret.Bytes(), ps[i].SigningShare)
		}
		if hex.EncodeToString(key.Verifying[i].Bytes()) != ps[i].VerifyingShare {
			t.Fatalf("participant %d verifying share differs", i)
		}
		if hex.EncodeToString(key.GroupKey()) != groupHex {
			t.Fatalf("group key = %x, want %s", key.GroupKey(), groupHex)
		}
	}
}

// runDKG runs a full t-of-n DKG in memory.
func runDKG(t testing.TB, th, n int) map[uint16]*KeyShare {
	t.Helper()
	secrets := map[uint16]*Round1Secret{}
	pkgs := map[uint16]*Round1Package{}
	for i := uint16(1); int(i) <= n; i++ {
		s, p, err := DKGRound1(i, th, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyRound1(i, th, p); err != nil {
			t.Fatal(err)
		}
		secrets[i], pkgs[i] = s, p
	}
	keys := map[uint16]*KeyShare{}
	for i := uint16(1); int(i) <= n; i++ {
		shares := map[uint16]*edwards25519.Scalar{}
		for from := uint16(1); int(from) <= n; from++ {
			shares[from] = secrets[from].Share(i)
		}
		k, err := DKGFinalize(secrets[i], pkgs, shares)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	return keys
}

func signWith(t testing.TB, keys map[uint16]*KeyShare, signers []uint16, msg []byte, corrupt uint16) ([]byte, error) {
	t.Helper()
	nonces := map[uint16]*Nonces{}
	var list []Commitment
	for _, id := range signers {
		nonces[id] = Commit(id, keys[id].Secret)
		list = append(list, nonces[id].Commitment())
	}
	SortCommitments(list)
	shares := map[uint16]*edwards25519.Scalar{}
	for _, id := range signers {
		z, err := Sign(keys[id], nonces[id], msg, list)
		if err != nil {
			t.Fatal(err)
		}
		if id == corrupt {
			z.Add(z, scalarOne())
		}
		shares[id] = z
	}
	k := keys[signers[0]]
	return Aggregate(k.Group, k.Verifying, k.Threshold, msg, list, shares)
}

// TestDKGThenSign: a 3-of-5 DKG, then every 3-subset signs, and the
// signatures verify with crypto/ed25519; 2 signers are not enough; a
// corrupt share names its signer.
func TestDKGThenSign(t *testing.T) {
	keys := runDKG(t, 3, 5)
	group := keys[1].GroupKey()
	for i := uint16(2); i <= 5; i++ {
		if !bytes.Equal(keys[i].GroupKey(), group) {
			t.Fatal("participants disagree on the group key")
		}
	}
	msg := []byte("a TBSCertificate")
	for _, set := range [][]uint16{{1, 2, 3}, {1, 4, 5}, {2, 3, 5}, {3, 4, 5}, {1, 2, 3, 4, 5}} {
		sig, err := signWith(t, keys, set, msg, 0)
		if err != nil {
			t.Fatalf("%v: %v", set, err)
		}
		if !ed25519.Verify(group, msg, sig) {
			t.Fatalf("%v: ed25519 refuses the signature", set)
		}
	}
	n1, n2 := Commit(1, keys[1].Secret), Commit(2, keys[2].Secret)
	two := []Commitment{n1.Commitment(), n2.Commitment()}
	if _, err := Sign(keys[1], n1, msg, two); !errors.Is(err, ErrBadCommitList) {
		t.Fatalf("signed with 2 of 3: %v", err)
	}
	_, err := signWith(t, keys, []uint16{2, 4, 5}, msg, 4)
	var ce *CulpritError
	if !errors.As(err, &ce) || ce.ID != 4 || !errors.Is(err, ErrBadShare) {
		t.Fatalf("corrupt share from 4: %v", err)
	}
}

// TestDKGCulprits: a bad proof, a bad secret share and a wrong number of
// commitments each name their sender.
func TestDKGCulprits(t *testing.T) {
	const th, n = 2, 3
	s1, p1, _ := DKGRound1(1, th, n)
	s2, p2, _ := DKGRound1(2, th, n)
	s3, p3, _ := DKGRound1(3, th, n)
	forged := *p2
	forged.ProofZ = new(edwards25519.Scalar).Add(p2.ProofZ, scalarOne())
	var ce *CulpritError
	if err := VerifyRound1(2, th, &forged); !errors.As(err, &ce) || ce.ID != 2 {
		t.Fatalf("forged proof: %v", err)
	}
	short := *p3
	short.Commitments = p3.Commitments[:1]
	if err := VerifyRound1(3, th, &short); !errors.As(err, &ce) || ce.ID != 3 {
		t.Fatalf("short commitments: %v", err)
	}
	pkgs := map[uint16]*Round1Package{1: p1, 2: p2, 3: p3}
	shares := map[uint16]*edwards25519.Scalar{1: s1.Share(1), 2: s2.Share(1), 3: new(edwards25519.Scalar).Add(s3.Share(1), scalarOne())}
	if _, err := DKGFinalize(s1, pkgs, shares); !errors.As(err, &ce) || ce.ID != 3 || !errors.Is(err, ErrBadSecret) {
		t.Fatalf("bad share from 3: %v", err)
	}
}

func TestCheckParams(t *testing.T) {
	for _, c := range []struct {
		t, n int
		ok   bool
	}{{2, 3, true}, {3, 5, true}, {5, 5, true}, {1, 3, false}, {2, 2, false}, {4, 3, false}, {0, 0, false}, {2, 256, false}} {
		if err := CheckParams(c.t, c.n); (err == nil) != c.ok {
			t.Errorf("CheckParams(%d, %d) = %v", c.t, c.n, err)
		}
	}
}

// TestDecodePointRefuses: the identity, small-order points, a point
// outside the prime-order subgroup, off-curve and non-canonical encodings.
func TestDecodePointRefuses(t *testing.T) {
	idp := edwards25519.NewIdentityPoint().Bytes()
	// A torsion point of order 8 and a generator plus it (mixed order).
	t8 := unhex(t, "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
	p8, err := new(edwards25519.Point).SetBytes(t8)
	if err != nil {
		t.Fatal(err)
	}
	mixed := new(edwards25519.Point).Add(edwards25519.NewGeneratorPoint(), p8).Bytes()
	nonCanon := bytes.Repeat([]byte{0xff}, 32)
	nonCanon[0], nonCanon[31] = 0xee, 0x7f
	offCurve := append([]byte{2}, make([]byte, 31)...)
	for name, b := range map[string][]byte{"identity": idp, "order 8": t8, "mixed order": mixed, "non-canonical": nonCanon, "off curve": offCurve, "short": idp[:31]} {
		if _, err := DecodePoint(b); !errors.Is(err, ErrBadPoint) {
			t.Errorf("%s: DecodePoint = %v", name, err)
		}
	}
	if _, err := DecodePoint(edwards25519.NewGeneratorPoint().Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeScalar(bytes.Repeat([]byte{0xff}, 32)); !errors.Is(err, ErrBadScalar) {
		t.Fatal("non-canonical scalar accepted")
	}
}

// TestNoncesSingleUse: a signature share consumes its nonces even when
// the request around it is refused, and the nonces are zeroed.
func TestNoncesSingleUse(t *testing.T) {
	keys := runDKG(t, 2, 3)
	n := Commit(1, keys[1].Secret)
	h := n.hiding
	if _, err := Sign(keys[1], n, []byte("m"), nil); !errors.Is(err, ErrBadCommitList) {
		t.Fatalf("empty list: %v", err)
	}
	if !n.Used() || h.Equal(edwards25519.NewScalar()) != 1 {
		t.Fatal("a refused Sign left the nonces usable or unzeroed")
	}
	other := Commit(2, keys[2].Secret)
	list := []Commitment{n.Commitment(), other.Commitment()}
	if _, err := Sign(keys[1], n, []byte("m"), list); !errors.Is(err, ErrNonceUsed) {
		t.Fatalf("reuse: %v", err)
	}
}

func BenchmarkSign3of5(b *testing.B) {
	keys := runDKG(b, 3, 5)
	msg := make([]byte, 400)
	for b.Loop() {
		if _, err := signWith(b, keys, []uint16{1, 2, 3}, msg, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzDecodePoint: whatever DecodePoint accepts is canonical, not the
// identity, and in the prime-order subgroup; DecodeScalar accepts only
// canonical scalars.
func FuzzDecodePoint(f *testing.F) {
	f.Add(edwards25519.NewGeneratorPoint().Bytes())
	f.Add(edwards25519.NewIdentityPoint().Bytes())
	f.Add(bytes.Repeat([]byte{0xff}, 32))
	f.Add(unhex(f, "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := DecodePoint(b); err == nil {
			if !bytes.Equal(p.Bytes(), b) || p.Equal(edwards25519.NewIdentityPoint()) == 1 {
				t.Fatal("accepted a non-canonical encoding or the identity")
			}
			q := new(edwards25519.Point).ScalarMult(lMinus1, p)
			if q.Add(q, p).Equal(edwards25519.NewIdentityPoint()) != 1 {
				t.Fatal("accepted a point outside the prime-order subgroup")
			}
		}
		if s, err := DecodeScalar(b); err == nil && !bytes.Equal(s.Bytes(), b) {
			t.Fatal("accepted a non-canonical scalar")
		}
	})
}
