package wire

import "github.com/korium/korium-tun/pki"

// ProbeRefusal is a signed "I refuse you, and why": the answer to a hello
// that is well signed but refused (addressed to another identity, or from
// an identity below the refuser's proof of work), and what a dialer whose
// TLS check refused its peer sends, so neither side waits out a timeout in
// silence. Its transaction ID echoes the refused hello's.
//
//	header | From (32, the refuser) | To (32, the refused) | reason (1) | bits (1) | Ed25519 signature (64)
const ProbeRefusal byte = 5

// Reasons a refusal gives.
const (
	// RefuseWrongIdentity: the hello was addressed to another identity
	// than the refuser's (the dialer expects someone else at this address).
	RefuseWrongIdentity byte = 1
	// RefuseLowPoW: the refused identity's proof of work is below the
	// refuser's difficulty, given in bits.
	RefuseLowPoW byte = 2
	// RefuseSameIdentity is a notice rather than a refusal: the sender
	// sees two live nodes with the receiver's identity (two nodes run one
	// key). It is sent to both.
	RefuseSameIdentity byte = 3
)

// RefusalSize is the size of an encoded refusal: less than HelloSize, so a
// refusal never amplifies the hello it answers.
const RefusalSize = ProbeHeaderSize + 2*pki.IdentitySize + 2 + 64

const refusalContext = "korium-tun smartsock refusal v1\x00"

// RefusalSignedSize is the length of what a refusal signature covers: a
// scratch buffer of this capacity makes Verify allocation-free.
const RefusalSignedSize = len(refusalContext) + RefusalSize - 64

// Refusal is a decoded refusal. It is trusted only after Verify.
type Refusal struct {
	ProbeHeader
	From, To pki.Identity
	Reason   byte
	Bits     byte // the refuser's difficulty (RefuseLowPoW)
	Sig      [64]byte
}

func appendRefusalSigned(b []byte, r *Refusal) []byte {
	b = append(b, refusalContext...)
	b = AppendProbeHeader(b, r.ProbeHeader)
	b = append(b, r.From[:]...)
	b = append(b, r.To[:]...)
	return append(b, r.Reason, r.Bits)
}

// NewRefusal builds and signs a refusal from kp to the refused identity.
func NewRefusal(kp *pki.Keypair, to pki.Identity, reason, bits byte, txID uint64, now int64) Refusal {
	r := Refusal{ProbeHeader: ProbeHeader{Type: ProbeRefusal, TxID: txID, Timestamp: now}, From: kp.Identity(), To: to, Reason: reason, Bits: bits}
	var buf [RefusalSignedSize]byte
	copy(r.Sig[:], kp.Sign(appendRefusalSigned(buf[:0], &r)))
	return r
}

// AppendRefusal appends the encoded refusal to b.
func AppendRefusal(b []byte, r *Refusal) []byte {
	b = AppendProbeHeader(b, r.ProbeHeader)
	b = append(b, r.From[:]...)
	b = append(b, r.To[:]...)
	b = append(b, r.Reason, r.Bits)
	return append(b, r.Sig[:]...)
}

// ParseRefusal decodes a refusal (header included). It checks only the
// format; callers must call Verify.
func ParseRefusal(b []byte) (Refusal, error) {
	var r Refusal
	ph, body, err := ParseProbeHeader(b)
	if err != nil {
		return r, err
	}
	if ph.Type != ProbeRefusal {
		return r, ErrProbeType
	}
	if len(body) != RefusalSize-ProbeHeaderSize {
		return r, ErrSize
	}
	if reason := body[64]; reason < RefuseWrongIdentity || reason > RefuseSameIdentity {
		return r, ErrProbeType
	}
	r.ProbeHeader = ph
	copy(r.From[:], body[:32])
	copy(r.To[:], body[32:64])
	r.Reason, r.Bits = body[64], body[65]
	copy(r.Sig[:], body[66:])
	return r, nil
}

// Verify checks the refusal's signature. scratch (may be nil) is used for
// what the signature covers; with capacity RefusalSignedSize nothing is
// allocated for it.
func (r *Refusal) Verify(scratch []byte) bool {
	return r.From.Verify(appendRefusalSigned(scratch[:0], r), r.Sig[:])
}
