package tca

import (
	"encoding/binary"
	"errors"
	"fmt"

	"filippo.io/edwards25519"

	"github.com/korium/korium-tun/pki/frost"
)

// Every message starts with a version byte and a type byte. Lengths and
// counts are checked against the limits below before anything is
// allocated; every point and scalar goes through frost's decoders.
const wireVersion = 1

// Message types.
const (
	msgRound1     byte = 1 // gossip ca/dkg/round1
	msgDKGShare   byte = 2 // RPC, signer -> signer
	msgCAShare    byte = 3 // RPC, signer -> signer
	msgPresence   byte = 4 // gossip ca/signers
	msgCSR        byte = 5 // gossip csr
	msgCommitment byte = 6 // RPC, signer -> requester
	msgSignReq    byte = 7 // RPC, requester -> signer
	msgSignShare  byte = 8 // the answer to msgSignReq
	msgRefusal    byte = 9 // a signer's answer to a CSR sent by RPC that it refuses
	// MsgLeafUpdate carries a member's renewed certificate to a peer it is
	// connected to (RPC, answered empty); the node handles it, not the
	// Service.
	MsgLeafUpdate byte = 10
)

// Limits of the wire formats.
const (
	MaxSigners   = 64        // N
	maxCertSize  = 16 << 10  // a CA certificate with 64 signers is about 6 KiB
	maxTBSSize   = 4 << 10   // a leaf TBSCertificate is about 400 bytes
	maxSPIFFELen = 2048      // as pki.ValidateSPIFFEID
	maxRefusal   = 256       // a refusal's text
	sessionSize  = 32        // DKG session ID
	reqIDSize    = 16        // signing request ID
	hashSize     = 32        // echo hash
	maxMessage   = 256 << 10 // anything larger is refused unread
)

var errMalformed = errors.New("tca: malformed message")

func malformed(what string) error { return fmt.Errorf("%w: %s", errMalformed, what) }

// reader is a bounded cursor over one message.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = malformed(what)
	}
}

func (r *reader) bytes(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.fail(what + ": truncated")
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8(what string) int {
	b := r.bytes(1, what)
	if b == nil {
		return 0
	}
	return int(b[0])
}

func (r *reader) u16(what string) int {
	b := r.bytes(2, what)
	if b == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(b))
}

func (r *reader) u64(what string) uint64 {
	b := r.bytes(8, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (r *reader) point(what string) *edwards25519.Point {
	b := r.bytes(frost.PointSize, what)
	if b == nil {
		return nil
	}
	p, err := frost.DecodePoint(b)
	if err != nil {
		r.fail(what + ": not a valid point")
		return nil
	}
	return p
}

func (r *reader) scalar(what string) *edwards25519.Scalar {
	b := r.bytes(frost.ScalarSize, what)
	if b == nil {
		return nil
	}
	s, err := frost.DecodeScalar(b)
	if err != nil {
		r.fail(what + ": not a canonical scalar")
		return nil
	}
	return s
}

// varBytes reads a 16-bit length and that many bytes, at most limit.
func (r *reader) varBytes(limit int, what string) []byte {
	n := r.u16(what)
	if r.err == nil && n > limit {
		r.fail(fmt.Sprintf("%s: %d bytes above %d", what, n, limit))
		return nil
	}
	return r.bytes(n, what)
}

func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return r.err
}

// header checks the version and type and returns a reader past them.
func header(b []byte, typ byte) *reader {
	r := &reader{b: b}
	if len(b) > maxMessage {
		r.fail("too large")
		return r
	}
	if v := r.u8("version"); r.err == nil && v != wireVersion {
		r.fail(fmt.Sprintf("version %d", v))
	}
	if t := r.u8("type"); r.err == nil && byte(t) != typ {
		r.fail(fmt.Sprintf("type %d, want %d", t, typ))
	}
	return r
}

// MessageType returns the type byte of an encoded message (0 if none).
func MessageType(b []byte) byte {
	if len(b) < 2 || b[0] != wireVersion {
		return 0
	}
	return b[1]
}

func appendHeader(b []byte, typ byte) []byte { return append(b, wireVersion, typ) }

func appendVar(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// ---- DKG ----

// round1Msg is a signer's round-1 broadcast: commitments to its
// polynomial, the proof of knowledge, and its nonce commitment for signing
// the CA certificate (broadcast here so the echo covers it too).
type round1Msg struct {
	Session [sessionSize]byte
	Time    uint64 // the sender's clock (unix seconds): the CA's NotBefore derives from the set
	Pkg     frost.Round1Package
	CAHide  *edwards25519.Point
	CABind  *edwards25519.Point
}

func (m *round1Msg) encode() []byte {
	b := appendHeader(nil, msgRound1)
	b = append(b, m.Session[:]...)
	b = binary.BigEndian.AppendUint64(b, m.Time)
	b = append(b, byte(len(m.Pkg.Commitments)))
	for _, c := range m.Pkg.Commitments {
		b = append(b, c.Bytes()...)
	}
	b = append(b, m.Pkg.ProofR.Bytes()...)
	b = append(b, m.Pkg.ProofZ.Bytes()...)
	b = append(b, m.CAHide.Bytes()...)
	return append(b, m.CABind.Bytes()...)
}

func decodeRound1(b []byte) (*round1Msg, error) {
	r := header(b, msgRound1)
	m := &round1Msg{}
	copy(m.Session[:], r.bytes(sessionSize, "session"))
	m.Time = r.u64("time")
	k := r.u8("commitment count")
	if r.err == nil && (k < 2 || k > MaxSigners) {
		r.fail(fmt.Sprintf("%d commitments", k))
	}
	if r.err != nil {
		return nil, r.err
	}
	m.Pkg.Commitments = make([]*edwards25519.Point, k)
	for i := range m.Pkg.Commitments {
		m.Pkg.Commitments[i] = r.point("commitment")
	}
	m.Pkg.ProofR = r.point("proof R")
	m.Pkg.ProofZ = r.scalar("proof z")
	m.CAHide = r.point("hiding commitment")
	m.CABind = r.point("binding commitment")
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// dkgShareMsg is round 2, point to point: the sender's secret share for the
// recipient, and the hash of every round-1 message it holds (the echo),
// in signer order.
type dkgShareMsg struct {
	Session [sessionSize]byte
	Share   *edwards25519.Scalar
	Echo    [][hashSize]byte
}

func (m *dkgShareMsg) encode() []byte {
	b := appendHeader(nil, msgDKGShare)
	b = append(b, m.Session[:]...)
	b = append(b, m.Share.Bytes()...)
	b = append(b, byte(len(m.Echo)))
	for _, h := range m.Echo {
		b = append(b, h[:]...)
	}
	return b
}

func decodeDKGShare(b []byte) (*dkgShareMsg, error) {
	r := header(b, msgDKGShare)
	m := &dkgShareMsg{}
	copy(m.Session[:], r.bytes(sessionSize, "session"))
	m.Share = r.scalar("share")
	n := r.u8("echo count")
	if r.err == nil && (n < 3 || n > MaxSigners) {
		r.fail(fmt.Sprintf("%d echo hashes", n))
	}
	if r.err != nil {
		return nil, r.err
	}
	m.Echo = make([][hashSize]byte, n)
	for i := range m.Echo {
		copy(m.Echo[i][:], r.bytes(hashSize, "echo"))
	}
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// caShareMsg carries a signer's signature share of the CA certificate.
type caShareMsg struct {
	Session [sessionSize]byte
	Z       *edwards25519.Scalar
}

func (m *caShareMsg) encode() []byte {
	b := appendHeader(nil, msgCAShare)
	b = append(b, m.Session[:]...)
	return append(b, m.Z.Bytes()...)
}

func decodeCAShare(b []byte) (*caShareMsg, error) {
	r := header(b, msgCAShare)
	m := &caShareMsg{}
	copy(m.Session[:], r.bytes(sessionSize, "session"))
	m.Z = r.scalar("share")
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// DKGSessionOf returns the session an encoded DKG message (round 1, round
// 2 share or CA share) belongs to.
func dkgSessionOf(b []byte) (s [sessionSize]byte, ok bool) {
	if len(b) < 2+sessionSize {
		return s, false
	}
	copy(s[:], b[2:2+sessionSize])
	return s, true
}

// ---- signing ----

// presenceMsg announces a signer and its CA (whose certificate lists the
// signers, signed by the group).
type presenceMsg struct {
	CACert []byte
}

func (m *presenceMsg) encode() []byte { return appendVar(appendHeader(nil, msgPresence), m.CACert) }

func decodePresence(b []byte) (*presenceMsg, error) {
	r := header(b, msgPresence)
	m := &presenceMsg{CACert: r.varBytes(maxCertSize, "CA certificate")}
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// csrMsg asks the signers of a trust domain for a certificate, broadcast
// on csr or sent to each signer by RPC (answered with a commitment or a
// refusal). The key is the sender's authenticated identity; everything
// else the signers check and build the TBSCertificate from.
type csrMsg struct {
	ReqID     [reqIDSize]byte
	SPIFFEID  string
	Serial    [16]byte
	NotBefore uint64 // unix seconds
	NotAfter  uint64
	Nonce     uint64 // the requester's proof-of-work nonce, put in the leaf
}

func (m *csrMsg) encode() []byte {
	b := appendHeader(nil, msgCSR)
	b = append(b, m.ReqID[:]...)
	b = appendVar(b, []byte(m.SPIFFEID))
	b = append(b, m.Serial[:]...)
	b = binary.BigEndian.AppendUint64(b, m.NotBefore)
	b = binary.BigEndian.AppendUint64(b, m.NotAfter)
	return binary.BigEndian.AppendUint64(b, m.Nonce)
}

func decodeCSR(b []byte) (*csrMsg, error) {
	r := header(b, msgCSR)
	m := &csrMsg{}
	copy(m.ReqID[:], r.bytes(reqIDSize, "request ID"))
	m.SPIFFEID = string(r.varBytes(maxSPIFFELen, "SPIFFE ID"))
	copy(m.Serial[:], r.bytes(16, "serial"))
	m.NotBefore = r.u64("not before")
	m.NotAfter = r.u64("not after")
	m.Nonce = r.u64("nonce")
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// commitmentMsg is a signer's nonce commitment for one request, sent to
// the requester with the CA certificate it signs for.
type commitmentMsg struct {
	ReqID  [reqIDSize]byte
	ID     uint16
	Hide   *edwards25519.Point
	Bind   *edwards25519.Point
	CACert []byte
}

func (m *commitmentMsg) encode() []byte {
	b := appendHeader(nil, msgCommitment)
	b = append(b, m.ReqID[:]...)
	b = binary.BigEndian.AppendUint16(b, m.ID)
	b = append(b, m.Hide.Bytes()...)
	b = append(b, m.Bind.Bytes()...)
	return appendVar(b, m.CACert)
}

func decodeCommitment(b []byte) (*commitmentMsg, error) {
	r := header(b, msgCommitment)
	m := &commitmentMsg{}
	copy(m.ReqID[:], r.bytes(reqIDSize, "request ID"))
	id := r.u16("identifier")
	if r.err == nil && (id < 1 || id > MaxSigners) {
		r.fail(fmt.Sprintf("identifier %d", id))
	}
	m.ID = uint16(id)
	m.Hide = r.point("hiding commitment")
	m.Bind = r.point("binding commitment")
	m.CACert = r.varBytes(maxCertSize, "CA certificate")
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// signReqMsg asks a signer for its share: the TBSCertificate and the
// commitments of every signer taking part.
type signReqMsg struct {
	ReqID       [reqIDSize]byte
	Commitments []frost.Commitment
	TBS         []byte
}

func (m *signReqMsg) encode() []byte {
	b := appendHeader(nil, msgSignReq)
	b = append(b, m.ReqID[:]...)
	b = append(b, byte(len(m.Commitments)))
	for _, c := range m.Commitments {
		b = binary.BigEndian.AppendUint16(b, c.ID)
		b = append(b, c.Hiding.Bytes()...)
		b = append(b, c.Binding.Bytes()...)
	}
	return appendVar(b, m.TBS)
}

func decodeSignReq(b []byte) (*signReqMsg, error) {
	r := header(b, msgSignReq)
	m := &signReqMsg{}
	copy(m.ReqID[:], r.bytes(reqIDSize, "request ID"))
	n := r.u8("commitment count")
	if r.err == nil && (n < 2 || n > MaxSigners) {
		r.fail(fmt.Sprintf("%d commitments", n))
	}
	if r.err != nil {
		return nil, r.err
	}
	m.Commitments = make([]frost.Commitment, n)
	for i := range m.Commitments {
		id := r.u16("identifier")
		if r.err == nil && (id < 1 || id > MaxSigners || (i > 0 && uint16(id) <= m.Commitments[i-1].ID)) {
			r.fail("identifiers must be 1..64 and strictly increasing")
		}
		m.Commitments[i] = frost.Commitment{ID: uint16(id), Hiding: r.point("hiding commitment"), Binding: r.point("binding commitment")}
	}
	m.TBS = r.varBytes(maxTBSSize, "TBSCertificate")
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

type signShareMsg struct {
	Z *edwards25519.Scalar
}

func (m *signShareMsg) encode() []byte {
	return append(appendHeader(nil, msgSignShare), m.Z.Bytes()...)
}

func decodeSignShare(b []byte) (*signShareMsg, error) {
	r := header(b, msgSignShare)
	m := &signShareMsg{Z: r.scalar("share")}
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// Reasons a signer refuses a CSR sent by RPC.
const (
	refuseNotApproved byte = 1 // this signer has not approved the identity (or revoked it)
	refuseRateLimited byte = 2
	refuseBusy        byte = 3
	refuseInvalid     byte = 4 // the CSR failed a check
	refuseNotSigner   byte = 5
)

// refusalMsg is a signer's refusal of a CSR, with a reason the requester
// counts and a short text for its error.
type refusalMsg struct {
	ReqID  [reqIDSize]byte
	Reason byte
	Text   string
}

func (m *refusalMsg) encode() []byte {
	b := appendHeader(nil, msgRefusal)
	b = append(b, m.ReqID[:]...)
	b = append(b, m.Reason)
	t := m.Text
	if len(t) > maxRefusal {
		t = t[:maxRefusal]
	}
	return appendVar(b, []byte(t))
}

func decodeRefusal(b []byte) (*refusalMsg, error) {
	r := header(b, msgRefusal)
	m := &refusalMsg{}
	copy(m.ReqID[:], r.bytes(reqIDSize, "request ID"))
	m.Reason = byte(r.u8("reason"))
	if r.err == nil && (m.Reason < refuseNotApproved || m.Reason > refuseNotSigner) {
		r.fail(fmt.Sprintf("reason %d", m.Reason))
	}
	m.Text = string(r.varBytes(maxRefusal, "text"))
	if err := r.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// MaxLeafSize bounds a leaf certificate in a MsgLeafUpdate (a leaf is
// about 500 bytes).
const MaxLeafSize = maxTBSSize + 256

// EncodeLeafUpdate is a MsgLeafUpdate carrying a DER leaf certificate.
func EncodeLeafUpdate(der []byte) []byte { return appendVar(appendHeader(nil, MsgLeafUpdate), der) }

// DecodeLeafUpdate returns the DER leaf of a MsgLeafUpdate (unparsed,
// at most MaxLeafSize bytes).
func DecodeLeafUpdate(b []byte) ([]byte, error) {
	r := header(b, MsgLeafUpdate)
	der := r.varBytes(MaxLeafSize, "certificate")
	if err := r.done(); err != nil {
		return nil, err
	}
	return der, nil
}
