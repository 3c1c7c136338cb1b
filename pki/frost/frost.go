// Package frost is FROST(Ed25519, SHA-512) as RFC 9591 specifies it, and a
// distributed key generation without a trusted dealer (the Pedersen DKG
// with proofs of knowledge from the FROST paper, hashed as the Zcash
// Foundation's frost-ed25519 does). The signatures it aggregates are
// ordinary Ed25519 signatures: crypto/ed25519.Verify accepts them.
//
// It is math only: no I/O, no clock, no goroutines. Every element read from
// outside goes through DecodePoint / DecodeScalar, which refuse
// non-canonical encodings, the identity and points outside the prime-order
// subgroup. Errors that a participant caused carry its identifier
// (*CulpritError), so a caller can name who broke a run.
//
// Signing nonces are single-use by construction: Nonces has no encoding,
// Sign consumes it (a second Sign with the same value fails), and its
// secret scalars are zeroed when consumed.
//
// It imports no package of this project.
package frost

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"filippo.io/edwards25519"
)

// contextString is RFC 9591's ciphersuite context for FROST(Ed25519, SHA-512).
const contextString = "FROST-ED25519-SHA512-v1"

// Sizes of the encodings.
const (
	PointSize     = 32
	ScalarSize    = 32
	SignatureSize = 64
)

// MaxParticipants bounds N (identifiers are 1..MaxParticipants).
const MaxParticipants = 255

// Errors. Those a participant caused come wrapped in a *CulpritError.
var (
	ErrBadPoint      = errors.New("frost: not a valid group element")
	ErrBadScalar     = errors.New("frost: not a canonical scalar")
	ErrBadConfig     = errors.New("frost: bad parameters")
	ErrNonceUsed     = errors.New("frost: signing nonces already used")
	ErrBadShare      = errors.New("frost: signature share does not verify")
	ErrBadProof      = errors.New("frost: proof of knowledge does not verify")
	ErrBadSecret     = errors.New("frost: secret share does not match its sender's commitments")
	ErrBadCommitList = errors.New("frost: malformed commitment list")
)

// CulpritError names the participant whose message failed a check.
type CulpritError struct {
	ID  uint16 // the participant's identifier
	Err error  // what failed (one of the Err values)
}

func (e *CulpritError) Error() string { return fmt.Sprintf("participant %d: %v", e.ID, e.Err) }
func (e *CulpritError) Unwrap() error { return e.Err }

func culprit(id uint16, err error) error { return &CulpritError{ID: id, Err: err} }

// ---- group helpers ----

// DecodePoint decodes a group element as RFC 9591's DeserializeElement for
// Ed25519: the canonical encoding of a point that is not the identity and
// lies in the prime-order subgroup.
func DecodePoint(b []byte) (*edwards25519.Point, error) {
	if len(b) != PointSize {
		return nil, ErrBadPoint
	}
	p, err := new(edwards25519.Point).SetBytes(b)
	if err != nil {
		return nil, ErrBadPoint
	}
	if [PointSize]byte(p.Bytes()) != [PointSize]byte(b) {
		return nil, ErrBadPoint // a non-canonical spelling
	}
	if p.Equal(edwards25519.NewIdentityPoint()) == 1 {
		return nil, ErrBadPoint
	}
	// [L]P = identity iff P is in the prime-order subgroup; a Scalar is
	// reduced mod L, so compute [L-1]P + P.
	q := new(edwards25519.Point).ScalarMult(lMinus1, p)
	if q.Add(q, p).Equal(edwards25519.NewIdentityPoint()) != 1 {
		return nil, ErrBadPoint
	}
	return p, nil
}

// DecodeScalar decodes a canonical little-endian scalar (below L).
func DecodeScalar(b []byte) (*edwards25519.Scalar, error) {
	if len(b) != ScalarSize {
		return nil, ErrBadScalar
	}
	s, err := new(edwards25519.Scalar).SetCanonicalBytes(b)
	if err != nil {
		return nil, ErrBadScalar
	}
	return s, nil
}

var lMinus1 = func() *edwards25519.Scalar {
	// L - 1 = 2^252 + 27742317777372353535851937790883648492, little-endian.
	b := [32]byte{0xec, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	s, err := new(edwards25519.Scalar).SetCanonicalBytes(b[:])
	if err != nil {
		panic(err)
	}
	return s
}()

// idScalar is an identifier as a scalar.
func idScalar(id uint16) *edwards25519.Scalar {
	var b [32]byte
	binary.LittleEndian.PutUint16(b[:], id)
	s, _ := new(edwards25519.Scalar).SetCanonicalBytes(b[:])
	return s
}

// hashToScalar is SHA-512 of the parts, as a little-endian integer mod L.
func hashToScalar(parts ...[]byte) *edwards25519.Scalar {
	h := sha512.New()
	for _, p := range parts {
		h.Write(p)
	}
	s, _ := new(edwards25519.Scalar).SetUniformBytes(h.Sum(nil))
	return s
}

func hashBytes(parts ...[]byte) []byte {
	h := sha512.New()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

// The RFC's H1 (rho), H2 (the Ed25519 challenge, no prefix), H3 (nonce),
// H4 (msg) and H5 (com).
func h1(m []byte) *edwards25519.Scalar { return hashToScalar([]byte(contextString+"rho"), m) }
func h2(parts ...[]byte) *edwards25519.Scalar {
	return hashToScalar(parts...)
}
func h3(parts ...[]byte) *edwards25519.Scalar {
	return hashToScalar(append([][]byte{[]byte(contextString + "nonce")}, parts...)...)
}
func h4(m []byte) []byte { return hashBytes([]byte(contextString+"msg"), m) }
func h5(m []byte) []byte { return hashBytes([]byte(contextString+"com"), m) }

// hdkg is the proof-of-knowledge challenge of the DKG (frost-ed25519's).
func hdkg(m []byte) *edwards25519.Scalar { return hashToScalar([]byte(contextString+"dkg"), m) }

func randomScalar() *edwards25519.Scalar {
	var b [64]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("frost: no randomness: " + err.Error())
	}
	s, _ := new(edwards25519.Scalar).SetUniformBytes(b[:])
	return s
}

// ---- keys ----

// KeyShare is one participant's part of the group key: its secret share,
// the public verifying shares of everyone, and the group's public key.
type KeyShare struct {
	ID        uint16
	Threshold int
	Secret    *edwards25519.Scalar
	Group     *edwards25519.Point
	// Verifying[i] is participant i's public share (its secret times the
	// base point), for every participant 1..N.
	Verifying map[uint16]*edwards25519.Point
}

// GroupKey returns the group's public key: an Ed25519 public key.
func (k *KeyShare) GroupKey() []byte { return k.Group.Bytes() }

// ---- signing ----

// Nonces are one signing session's secret nonces. They have no encoding
// and are consumed by Sign: a nonce can never sign twice.
type Nonces struct {
	hiding, binding *edwards25519.Scalar
	commitment      Commitment
}

// Commitment is a participant's public nonce commitment for one session.
type Commitment struct {
	ID      uint16
	Hiding  *edwards25519.Point
	Binding *edwards25519.Point
}

// Commit draws fresh nonces for the participant holding secret (RFC 9591
// nonce_generate: 32 random bytes hashed with the secret, so a weak RNG
// alone does not reveal the nonce).
func Commit(id uint16, secret *edwards25519.Scalar) *Nonces {
	var rh, rb [32]byte
	if _, err := rand.Read(rh[:]); err != nil {
		panic("frost: no randomness: " + err.Error())
	}
	if _, err := rand.Read(rb[:]); err != nil {
		panic("frost: no randomness: " + err.Error())
	}
	return commitWith(id, secret, rh[:], rb[:])
}

func commitWith(id uint16, secret *edwards25519.Scalar, rh, rb []byte) *Nonces {
	n := &Nonces{hiding: h3(rh, secret.Bytes()), binding: h3(rb, secret.Bytes())}
	n.commitment = Commitment{
		ID:      id,
		Hiding:  new(edwards25519.Point).ScalarBaseMult(n.hiding),
		Binding: new(edwards25519.Point).ScalarBaseMult(n.binding),
	}
	return n
}

// Commitment returns the public commitment to n.
func (n *Nonces) Commitment() Commitment { return n.commitment }

// Used reports whether n has been consumed.
func (n *Nonces) Used() bool { return n.hiding == nil }

// Discard zeroes n unused (an expired session): it can no longer sign.
func (n *Nonces) Discard() { n.take() }

// take returns the nonces and zeroes n, once.
func (n *Nonces) take() (h, b *edwards25519.Scalar, ok bool) {
	if n == nil || n.hiding == nil {
		return nil, nil, false
	}
	h, b = new(edwards25519.Scalar).Set(n.hiding), new(edwards25519.Scalar).Set(n.binding)
	zero := edwards25519.NewScalar()
	n.hiding.Set(zero)
	n.binding.Set(zero)
	n.hiding, n.binding = nil, nil
	return h, b, true
}

// checkList validates a commitment list: sorted strictly by identifier,
// identifiers in 1..MaxParticipants, at least threshold entries.
func checkList(list []Commitment, threshold int) error {
	if len(list) < threshold || len(list) > MaxParticipants {
		return fmt.Errorf("%w: %d commitments, need %d", ErrBadCommitList, len(list), threshold)
	}
	for i, c := range list {
		if c.ID == 0 || c.Hiding == nil || c.Binding == nil {
			return fmt.Errorf("%w: entry %d", ErrBadCommitList, i)
		}
		if i > 0 && list[i-1].ID >= c.ID {
			return fmt.Errorf("%w: identifiers not strictly increasing", ErrBadCommitList)
		}
	}
	return nil
}

// SortCommitments orders list by identifier, as signing requires.
func SortCommitments(list []Commitment) {
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
}

// bindingFactors computes each participant's binding factor and the group
// commitment R for msg (RFC 9591 4.4 and 4.5).
func bindingFactors(group *edwards25519.Point, list []Commitment, msg []byte) (map[uint16]*edwards25519.Scalar, *edwards25519.Point) {
	enc := make([]byte, 0, len(list)*(ScalarSize+2*PointSize))
	for _, c := range list {
		enc = append(enc, idScalar(c.ID).Bytes()...)
		enc = append(enc, c.Hiding.Bytes()...)
		enc = append(enc, c.Binding.Bytes()...)
	}
	prefix := make([]byte, 0, PointSize+2*64+ScalarSize)
	prefix = append(prefix, group.Bytes()...)
	prefix = append(prefix, h4(msg)...)
	prefix = append(prefix, h5(enc)...)
	rhos := make(map[uint16]*edwards25519.Scalar, len(list))
	r := edwards25519.NewIdentityPoint()
	for _, c := range list {
		rho := h1(append(prefix[:len(prefix):len(prefix)], idScalar(c.ID).Bytes()...))
		rhos[c.ID] = rho
		r.Add(r, c.Hiding)
		r.Add(r, new(edwards25519.Point).ScalarMult(rho, c.Binding))
	}
	return rhos, r
}

// lagrange is participant id's Lagrange coefficient at 0 for the set ids.
func lagrange(id uint16, ids []uint16) *edwards25519.Scalar {
	num, den := scalarOne(), scalarOne()
	xi := idScalar(id)
	for _, j := range ids {
		if j == id {
			continue
		}
		xj := idScalar(j)
		num.Multiply(num, xj)
		den.Multiply(den, new(edwards25519.Scalar).Subtract(xj, xi))
	}
	return num.Multiply(num, new(edwards25519.Scalar).Invert(den))
}

func scalarOne() *edwards25519.Scalar {
	var b [32]byte
	b[0] = 1
	s, _ := new(edwards25519.Scalar).SetCanonicalBytes(b[:])
	return s
}

func ids(list []Commitment) []uint16 {
	out := make([]uint16, len(list))
	for i, c := range list {
		out[i] = c.ID
	}
	return out
}

// Sign computes key's signature share of msg over the commitment list
// (sorted, including key's own commitment, which must be nonces'). It
// consumes nonces first: whatever happens after, they never sign again.
func Sign(key *KeyShare, nonces *Nonces, msg []byte, list []Commitment) (*edwards25519.Scalar, error) {
	hiding, binding, ok := nonces.take()
	if !ok {
		return nil, ErrNonceUsed
	}
	if err := checkList(list, key.Threshold); err != nil {
		return nil, err
	}
	var mine *Commitment
	for i := range list {
		if list[i].ID == key.ID {
			mine = &list[i]
		}
	}
	own := nonces.commitment
	if mine == nil || mine.Hiding.Equal(own.Hiding) != 1 || mine.Binding.Equal(own.Binding) != 1 {
		return nil, fmt.Errorf("%w: our own commitment is missing or altered", ErrBadCommitList)
	}
	rhos, r := bindingFactors(key.Group, list, msg)
	c := h2(r.Bytes(), key.Group.Bytes(), msg)
	lambda := lagrange(key.ID, ids(list))
	// z = d + e*rho + lambda*s*c
	z := new(edwards25519.Scalar).Multiply(binding, rhos[key.ID])
	z.Add(z, hiding)
	ls := new(edwards25519.Scalar).Multiply(lambda, key.Secret)
	z.Add(z, ls.Multiply(ls, c))
	return z, nil
}

// Aggregate verifies every signature share against its participant's
// verifying share and sums them into an Ed25519 signature (R || z). A share
// that does not verify is reported as a *CulpritError naming its signer
// (identifiable abort); the first such signer in identifier order is named.
func Aggregate(group *edwards25519.Point, verifying map[uint16]*edwards25519.Point, threshold int, msg []byte, list []Commitment, shares map[uint16]*edwards25519.Scalar) ([]byte, error) {
	if err := checkList(list, threshold); err != nil {
		return nil, err
	}
	rhos, r := bindingFactors(group, list, msg)
	c := h2(r.Bytes(), group.Bytes(), msg)
	all := ids(list)
	z := edwards25519.NewScalar()
	for _, cm := range list {
		zi := shares[cm.ID]
		pk := verifying[cm.ID]
		if zi == nil || pk == nil {
			return nil, culprit(cm.ID, ErrBadShare)
		}
		// zi*G == D + rho*E + c*lambda*PK
		lhs := new(edwards25519.Point).ScalarBaseMult(zi)
		rhs := new(edwards25519.Point).ScalarMult(rhos[cm.ID], cm.Binding)
		rhs.Add(rhs, cm.Hiding)
		cl := new(edwards25519.Scalar).Multiply(c, lagrange(cm.ID, all))
		rhs.Add(rhs, new(edwards25519.Point).ScalarMult(cl, pk))
		if lhs.Equal(rhs) != 1 {
			return nil, culprit(cm.ID, ErrBadShare)
		}
		z.Add(z, zi)
	}
	return append(r.Bytes(), z.Bytes()...), nil
}

// ---- distributed key generation ----

// Round1Secret is what a DKG participant keeps between rounds 1 and 2: its
// polynomial. It has no encoding.
type Round1Secret struct {
	ID        uint16
	Threshold int
	N         int
	coeffs    []*edwards25519.Scalar
}

// Round1Package is what a participant broadcasts in round 1: commitments
// to its polynomial's coefficients and a proof of knowledge of the first.
type Round1Package struct {
	Commitments []*edwards25519.Point // Threshold points
	ProofR      *edwards25519.Point
	ProofZ      *edwards25519.Scalar
}

// CheckParams refuses what the DKG cannot run: n >= 3 (the floor:
// a 2-party CA would let one signer veto nothing), 2 <= t <= n <= MaxParticipants.
func CheckParams(t, n int) error {
	switch {
	case n < 3 || n > MaxParticipants:
		return fmt.Errorf("%w: %d signers, want 3..%d", ErrBadConfig, n, MaxParticipants)
	case t < 2 || t > n:
		return fmt.Errorf("%w: threshold %d, want 2..%d (the number of signers)", ErrBadConfig, t, n)
	}
	return nil
}

// DKGRound1 starts participant id's part in a t-of-n DKG.
func DKGRound1(id uint16, t, n int) (*Round1Secret, *Round1Package, error) {
	coeffs := make([]*edwards25519.Scalar, t)
	for i := range coeffs {
		coeffs[i] = randomScalar()
	}
	return dkgRound1With(id, t, n, coeffs, randomScalar())
}

func dkgRound1With(id uint16, t, n int, coeffs []*edwards25519.Scalar, k *edwards25519.Scalar) (*Round1Secret, *Round1Package, error) {
	if err := CheckParams(t, n); err != nil {
		return nil, nil, err
	}
	if id == 0 || int(id) > n || len(coeffs) != t {
		return nil, nil, fmt.Errorf("%w: identifier %d of %d", ErrBadConfig, id, n)
	}
	pkg := &Round1Package{Commitments: make([]*edwards25519.Point, t)}
	for i, a := range coeffs {
		pkg.Commitments[i] = new(edwards25519.Point).ScalarBaseMult(a)
	}
	pkg.ProofR = new(edwards25519.Point).ScalarBaseMult(k)
	c := pokChallenge(id, pkg.Commitments[0], pkg.ProofR)
	pkg.ProofZ = new(edwards25519.Scalar).MultiplyAdd(coeffs[0], c, k) // k + a0*c
	return &Round1Secret{ID: id, Threshold: t, N: n, coeffs: coeffs}, pkg, nil
}

func pokChallenge(id uint16, phi0, r *edwards25519.Point) *edwards25519.Scalar {
	m := make([]byte, 0, ScalarSize+2*PointSize)
	m = append(m, idScalar(id).Bytes()...)
	m = append(m, phi0.Bytes()...)
	m = append(m, r.Bytes()...)
	return hdkg(m)
}

// VerifyRound1 checks sender id's round-1 package: t commitments and a
// valid proof of knowledge. Failures name id.
func VerifyRound1(id uint16, t int, pkg *Round1Package) error {
	if pkg == nil || len(pkg.Commitments) != t || pkg.ProofR == nil || pkg.ProofZ == nil {
		return culprit(id, fmt.Errorf("%w: want %d commitments", ErrBadCommitList, t))
	}
	for _, c := range pkg.Commitments {
		if c == nil {
			return culprit(id, ErrBadPoint)
		}
	}
	c := pokChallenge(id, pkg.Commitments[0], pkg.ProofR)
	// z*G == R + c*phi0
	lhs := new(edwards25519.Point).ScalarBaseMult(pkg.ProofZ)
	rhs := new(edwards25519.Point).ScalarMult(c, pkg.Commitments[0])
	rhs.Add(rhs, pkg.ProofR)
	if lhs.Equal(rhs) != 1 {
		return culprit(id, ErrBadProof)
	}
	return nil
}

// Share returns the secret share f(to) that participant s sends to
// participant to in round 2.
func (s *Round1Secret) Share(to uint16) *edwards25519.Scalar { return evalPoly(s.coeffs, to) }

// Zero wipes the polynomial once every share is sent and finalized.
func (s *Round1Secret) Zero() {
	z := edwards25519.NewScalar()
	for _, c := range s.coeffs {
		c.Set(z)
	}
	s.coeffs = nil
}

func evalPoly(coeffs []*edwards25519.Scalar, at uint16) *edwards25519.Scalar {
	x := idScalar(at)
	acc := edwards25519.NewScalar()
	for i := len(coeffs) - 1; i >= 0; i-- { // Horner
		acc.MultiplyAdd(acc, x, coeffs[i])
	}
	return acc
}

// evalCommitments returns sum_k x^k * C_k: the public image of a
// polynomial at x.
func evalCommitments(cs []*edwards25519.Point, at uint16) *edwards25519.Point {
	x := idScalar(at)
	acc := edwards25519.NewIdentityPoint()
	for i := len(cs) - 1; i >= 0; i-- {
		acc.ScalarMult(x, acc)
		acc.Add(acc, cs[i])
	}
	return acc
}

// DKGFinalize checks every share received in round 2 against its sender's
// round-1 commitments and combines them: our secret share, everyone's
// verifying share and the group key. packages and shares are keyed by
// participant, 1..N, and include our own (our own share is s.Share(s.ID)).
// A share that does not match names its sender.
func DKGFinalize(s *Round1Secret, packages map[uint16]*Round1Package, shares map[uint16]*edwards25519.Scalar) (*KeyShare, error) {
	if len(packages) != s.N || len(shares) != s.N {
		return nil, fmt.Errorf("%w: have %d packages and %d shares of %d", ErrBadConfig, len(packages), len(shares), s.N)
	}
	secret := edwards25519.NewScalar()
	for from := uint16(1); int(from) <= s.N; from++ {
		pkg, share := packages[from], shares[from]
		if pkg == nil || share == nil || len(pkg.Commitments) != s.Threshold {
			return nil, culprit(from, ErrBadSecret)
		}
		if new(edwards25519.Point).ScalarBaseMult(share).Equal(evalCommitments(pkg.Commitments, s.ID)) != 1 {
			return nil, culprit(from, ErrBadSecret)
		}
		secret.Add(secret, share)
	}
	group, verifying := PublicFromPackages(s.N, packages)
	if new(edwards25519.Point).ScalarBaseMult(secret).Equal(verifying[s.ID]) != 1 {
		return nil, fmt.Errorf("%w: our share does not match our verifying share", ErrBadSecret)
	}
	return &KeyShare{ID: s.ID, Threshold: s.Threshold, Secret: secret, Group: group, Verifying: verifying}, nil
}

// PublicFromPackages computes the group key and every participant's
// verifying share from the round-1 packages alone (anyone can).
func PublicFromPackages(n int, packages map[uint16]*Round1Package) (*edwards25519.Point, map[uint16]*edwards25519.Point) {
	group := edwards25519.NewIdentityPoint()
	verifying := make(map[uint16]*edwards25519.Point, n)
	for i := uint16(1); int(i) <= n; i++ {
		verifying[i] = edwards25519.NewIdentityPoint()
	}
	for from := uint16(1); int(from) <= n; from++ {
		pkg := packages[from]
		group.Add(group, pkg.Commitments[0])
		for i := uint16(1); int(i) <= n; i++ {
			verifying[i].Add(verifying[i], evalCommitments(pkg.Commitments, i))
		}
	}
	return group, verifying
}
