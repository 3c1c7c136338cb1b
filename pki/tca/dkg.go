package tca

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"filippo.io/edwards25519"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/frost"
)

// DKGConfig configures one key-generation ceremony. Every signer runs it
// with the same trust domain, threshold and signer set (in any order).
type DKGConfig struct {
	TrustDomain string
	Threshold   int            // K: signers needed to sign, 2..N
	Signers     []pki.Identity // N >= 3 identities, ours among them
	// CAValidity is the CA certificate's lifetime (default 10 years).
	CAValidity time.Duration
}

// AbortError ends a DKG and names who broke it.
type AbortError struct {
	Culprit pki.Identity
	Reason  string
}

func (e *AbortError) Error() string {
	return fmt.Sprintf("tca: DKG aborted: signer %s %s", e.Culprit, e.Reason)
}

func abort(who pki.Identity, format string, args ...any) error {
	return &AbortError{Culprit: who, Reason: fmt.Sprintf(format, args...)}
}

// maxClockOffset bounds how far a signer's round-1 time may be from ours.
const maxClockOffset = time.Hour

// dkgRun is one signer's DKG state machine. It does no I/O: the driver
// feeds it messages and sends what it produces. Not safe for concurrent
// use (the Service's mutex guards it).
type dkgRun struct {
	self     pki.Identity
	myID     uint16
	td       spiffeid.TrustDomain
	t, n     int
	signers  []pki.Identity // sorted: signers[i] has identifier i+1
	session  [sessionSize]byte
	validity time.Duration
	now      func() time.Time

	secret   *frost.Round1Secret
	caNonces *frost.Nonces // signs the CA certificate, once
	own      []byte        // our round-1 message

	r1raw    map[uint16][]byte
	r1       map[uint16]*round1Msg
	r2raw    map[uint16][]byte
	r2       map[uint16]*dkgShareMsg
	caShares map[uint16]*edwards25519.Scalar
	caRaw    map[uint16][]byte

	// Once every round-1 message is in:
	echo   [][hashSize]byte
	caTmpl *x509.Certificate
	caTBS  []byte
	caList []frost.Commitment
	out2   map[uint16][]byte // our round-2 message for each signer

	key    *frost.KeyShare // once finalized
	caOut  []byte          // our CA share message
	result *SignerState
	err    error // set when aborted
}

// sessionID names a ceremony by its parameters, so every signer computes
// it without talking first.
func sessionID(td string, t int, signers []pki.Identity) [sessionSize]byte {
	h := sha256.New()
	h.Write([]byte("korium-tun dkg v1\x00"))
	h.Write([]byte(td))
	h.Write([]byte{0, byte(t), byte(len(signers))})
	for _, s := range signers {
		h.Write(s[:])
	}
	return [sessionSize]byte(h.Sum(nil))
}

// checkDKGConfig validates c for self and returns the sorted signers.
func checkDKGConfig(c DKGConfig, self pki.Identity) ([]pki.Identity, spiffeid.TrustDomain, uint16, error) {
	var td spiffeid.TrustDomain
	if err := (pki.SPIFFEConfig{TrustDomain: c.TrustDomain}).Check(); err != nil {
		return nil, td, 0, err
	}
	td, _ = spiffeid.TrustDomainFromString(c.TrustDomain)
	n := len(c.Signers)
	if n > MaxSigners {
		return nil, td, 0, fmt.Errorf("tca: %d signers, at most %d", n, MaxSigners)
	}
	if err := frost.CheckParams(c.Threshold, n); err != nil {
		return nil, td, 0, fmt.Errorf("tca: %d signers with threshold %d: need at least 3 signers and a threshold from 2 to the number of signers", n, c.Threshold)
	}
	sorted := sortSigners(c.Signers)
	var myID uint16
	for i, s := range sorted {
		if err := s.Check(); err != nil {
			return nil, td, 0, err
		}
		if i > 0 && sorted[i-1] == s {
			return nil, td, 0, fmt.Errorf("tca: signer %s is listed twice", s.Short())
		}
		if s == self {
			myID = uint16(i + 1)
		}
	}
	if myID == 0 {
		return nil, td, 0, fmt.Errorf("tca: this node (%s) is not among the signers", self)
	}
	return sorted, td, myID, nil
}

func newDKGRun(c DKGConfig, self pki.Identity, now func() time.Time) (*dkgRun, error) {
	sorted, td, myID, err := checkDKGConfig(c, self)
	if err != nil {
		return nil, err
	}
	if c.CAValidity <= 0 {
		c.CAValidity = 10 * 365 * 24 * time.Hour
	}
	r := &dkgRun{
		self: self, myID: myID, td: td, t: c.Threshold, n: len(sorted), signers: sorted,
		session: sessionID(td.Name(), c.Threshold, sorted), validity: c.CAValidity, now: now,
		r1raw: map[uint16][]byte{}, r1: map[uint16]*round1Msg{}, r2raw: map[uint16][]byte{}, r2: map[uint16]*dkgShareMsg{},
		caShares: map[uint16]*edwards25519.Scalar{}, caRaw: map[uint16][]byte{},
	}
	sec, pkg, err := frost.DKGRound1(myID, r.t, r.n)
	if err != nil {
		return nil, err
	}
	r.secret = sec
	// The CA nonce needs a secret to hash with; the polynomial's value at
	// our identifier stands in (the final share is not known yet).
	r.caNonces = frost.Commit(myID, sec.Share(myID))
	cm := r.caNonces.Commitment()
	m := &round1Msg{Session: r.session, Time: uint64(now().Unix()), Pkg: *pkg, CAHide: cm.Hiding, CABind: cm.Binding}
	r.own = m.encode()
	r.r1raw[myID], r.r1[myID] = r.own, m
	return r, nil
}

func (r *dkgRun) idOf(from pki.Identity) uint16 {
	for i, s := range r.signers {
		if s == from {
			return uint16(i + 1)
		}
	}
	return 0
}

// errNotOurs refuses a message for another session or from a non-signer:
// counted and dropped, the run goes on.
var errNotOurs = errors.New("tca: not for this DKG")

// onRound1 takes a signer's round-1 broadcast.
func (r *dkgRun) onRound1(from pki.Identity, raw []byte) error {
	id := r.idOf(from)
	if id == 0 || id == r.myID {
		return errNotOurs
	}
	if old, ok := r.r1raw[id]; ok {
		if bytes.Equal(old, raw) {
			return nil // a republish
		}
		return r.fail(abort(from, "sent two different round-1 messages"))
	}
	m, err := decodeRound1(raw)
	if err != nil {
		return err
	}
	if m.Session != r.session {
		return errNotOurs
	}
	if err := frost.VerifyRound1(id, r.t, &m.Pkg); err != nil {
		return r.fail(abort(from, "sent an invalid round-1 package: %v", err))
	}
	if d := time.Duration(int64(m.Time)-r.now().Unix()) * time.Second; d > maxClockOffset || d < -maxClockOffset {
		return r.fail(abort(from, "has a clock %v off ours", d))
	}
	r.r1raw[id], r.r1[id] = append([]byte(nil), raw...), m
	return r.advance()
}

// onDKGShare takes a signer's round-2 share and echo.
func (r *dkgRun) onDKGShare(from pki.Identity, raw []byte) error {
	id := r.idOf(from)
	if id == 0 || id == r.myID {
		return errNotOurs
	}
	if old, ok := r.r2raw[id]; ok {
		if bytes.Equal(old, raw) {
			return nil
		}
		return r.fail(abort(from, "sent two different round-2 messages"))
	}
	m, err := decodeDKGShare(raw)
	if err != nil {
		return err
	}
	if m.Session != r.session {
		return errNotOurs
	}
	if len(m.Echo) != r.n {
		return r.fail(abort(from, "echoed %d round-1 messages, there are %d", len(m.Echo), r.n))
	}
	r.r2raw[id], r.r2[id] = append([]byte(nil), raw...), m
	return r.advance()
}

// onCAShare takes a signer's signature share of the CA certificate.
func (r *dkgRun) onCAShare(from pki.Identity, raw []byte) error {
	id := r.idOf(from)
	if id == 0 || id == r.myID {
		return errNotOurs
	}
	if old, ok := r.caRaw[id]; ok {
		if bytes.Equal(old, raw) {
			return nil
		}
		return r.fail(abort(from, "sent two different CA signature shares"))
	}
	m, err := decodeCAShare(raw)
	if err != nil {
		return err
	}
	if m.Session != r.session {
		return errNotOurs
	}
	r.caRaw[id], r.caShares[id] = append([]byte(nil), raw...), m.Z
	return r.advance()
}

func (r *dkgRun) fail(err error) error {
	if r.err == nil {
		r.err = err
		r.wipe()
	}
	return err
}

func (r *dkgRun) wipe() {
	if r.secret != nil {
		r.secret.Zero()
	}
	r.caNonces.Discard()
}

// advance moves the run as far as the messages it holds allow.
func (r *dkgRun) advance() error {
	if r.err != nil {
		return r.err
	}
	if r.echo == nil && len(r.r1) == r.n {
		if err := r.allRound1(); err != nil {
			return r.fail(err)
		}
	}
	if r.echo != nil && r.key == nil && len(r.r2) == r.n-1 {
		if err := r.finalize(); err != nil {
			return r.fail(err)
		}
	}
	if r.key != nil && r.result == nil && len(r.caShares) == r.n {
		if err := r.signCA(); err != nil {
			return r.fail(err)
		}
	}
	return nil
}

// allRound1: the echo hashes, the group's public keys, the CA certificate
// to sign, and our round-2 messages.
func (r *dkgRun) allRound1() error {
	r.echo = make([][hashSize]byte, r.n)
	pkgs := map[uint16]*frost.Round1Package{}
	minTime := ^uint64(0)
	for i := uint16(1); int(i) <= r.n; i++ {
		r.echo[i-1] = sha256.Sum256(r.r1raw[i])
		pkgs[i] = &r.r1[i].Pkg
		minTime = min(minTime, r.r1[i].Time)
		r.caList = append(r.caList, frost.Commitment{ID: i, Hiding: r.r1[i].CAHide, Binding: r.r1[i].CABind})
	}
	group, verifying := frost.PublicFromPackages(r.n, pkgs)
	// An hour back for clocks a little behind ours, to the second, so
	// that every signer derives the same certificate.
	notBefore := time.Unix(int64(minTime), 0).UTC().Add(-time.Hour)
	tmpl, err := caTemplate(r.td, group.Bytes(), r.t, r.signers, verifying, notBefore, r.validity)
	if err != nil {
		return err
	}
	if r.caTBS, err = buildTBS(tmpl, tmpl, group.Bytes(), group.Bytes()); err != nil {
		return err
	}
	r.caTmpl = tmpl
	r.out2 = map[uint16][]byte{}
	for i := uint16(1); int(i) <= r.n; i++ {
		if i != r.myID {
			r.out2[i] = (&dkgShareMsg{Session: r.session, Share: r.secret.Share(i), Echo: r.echo}).encode()
		}
	}
	return nil
}

// finalize checks that everyone saw the same round-1 set, then our
// shares, and signs the CA certificate with our new key share.
func (r *dkgRun) finalize() error {
	for id, m := range r.r2 {
		for i := range r.echo {
			if m.Echo[i] != r.echo[i] {
				return abort(r.signers[i], "sent different round-1 messages to different signers (signer %s saw another one; or it lies)", r.signers[id-1].Short())
			}
		}
	}
	pkgs := map[uint16]*frost.Round1Package{}
	shares := map[uint16]*edwards25519.Scalar{r.myID: r.secret.Share(r.myID)}
	for i := uint16(1); int(i) <= r.n; i++ {
		pkgs[i] = &r.r1[i].Pkg
		if i != r.myID {
			shares[i] = r.r2[i].Share
		}
	}
	key, err := frost.DKGFinalize(r.secret, pkgs, shares)
	if err != nil {
		var ce *frost.CulpritError
		if errors.As(err, &ce) && ce.ID >= 1 && int(ce.ID) <= r.n {
			return abort(r.signers[ce.ID-1], "sent a secret share that does not match its commitments")
		}
		return err
	}
	r.key = key
	z, err := frost.Sign(key, r.caNonces, r.caTBS, r.caList)
	if err != nil {
		return err
	}
	r.caShares[r.myID] = z
	r.caOut = (&caShareMsg{Session: r.session, Z: z}).encode()
	return nil
}

// signCA aggregates the CA signature; a bad share names its signer.
func (r *dkgRun) signCA() error {
	sig, err := frost.Aggregate(r.key.Group, r.key.Verifying, r.t, r.caTBS, r.caList, r.caShares)
	if err != nil {
		var ce *frost.CulpritError
		if errors.As(err, &ce) && ce.ID >= 1 && int(ce.ID) <= r.n {
			return abort(r.signers[ce.ID-1], "sent a bad signature share for the CA certificate")
		}
		return err
	}
	group := r.key.GroupKey()
	der, err := assemble(r.caTmpl, r.caTmpl, group, group, r.caTBS, sig)
	if err != nil {
		return err
	}
	ca, err := ParseCA(der)
	if err != nil {
		return err
	}
	r.result = &SignerState{Identity: r.self, ID: r.myID, Secret: r.key.Secret, CA: ca}
	r.secret.Zero()
	return nil
}

// sessionHex is the session for logs.
func (r *dkgRun) sessionHex() string { return fmt.Sprintf("%x", r.session[:8]) }
