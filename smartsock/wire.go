package smartsock

import (
	"encoding/binary"
	"errors"

	"github.com/korium/korium-tun/pki"
)

// Wire formats of the non-QUIC packets that share the UDP socket with QUIC.
// Both magics begin with a byte that is a valid QUIC short-header first byte
// (0x40 bit set), so packets are told apart by the whole 4-byte magic, and our
// connection IDs never begin with the three bytes that follow (see cid.go).

// Probe (SMPR) header, as in the reference:
//
//	magic "SMPR" (4) | type (1) | transaction ID (8) | timestamp (8, unix ns, big endian)
const (
	probeMagic      = "SMPR"
	ProbeHeaderSize = 4 + 1 + 8 + 8
)

// Relay frame (CRLY) header, as in the reference:
//
//	magic "CRLY" (4) | session ID (16) | QUIC payload
const (
	relayMagic      = "CRLY"
	RelayHeaderSize = 4 + 16
)

// Probe types.
const (
	// ProbeHello announces "identity From is at this source address" to
	// identity To, signed by From. It precedes every QUIC long-header packet
	// sent on a path that has not carried a completed handshake yet.
	ProbeHello byte = 1
)

// helloBodySize is From (32) + From's proof-of-work nonce (8) + To (32) +
// Ed25519 signature (64).
const helloBodySize = 2*pki.IdentitySize + 8 + 64

// HelloSize is the size of an encoded hello probe.
const HelloSize = ProbeHeaderSize + helloBodySize

// helloContext separates hello signatures from every other signature made
// with the identity key.
const helloContext = "korium-tun smartsock hello v1\x00"

// ProbeHeader is the fixed part of every SMPR packet.
type ProbeHeader struct {
	Type      byte
	TxID      uint64
	Timestamp int64 // unix nanoseconds of the sender's clock
}

// Hello is a decoded hello probe. It is only trusted after Verify.
type Hello struct {
	ProbeHeader
	From     pki.Identity
	PoWNonce uint64 // From's proof of work, checked before the signature
	To       pki.Identity
	Sig      [64]byte
}

var (
	errShort    = errors.New("packet too short")
	errMagic    = errors.New("bad magic")
	errType     = errors.New("unknown probe type")
	errBadHello = errors.New("hello has wrong length")
)

// IsProbe reports whether b starts with the SMPR magic.
func IsProbe(b []byte) bool { return len(b) >= 4 && string(b[:4]) == probeMagic }

// IsRelay reports whether b starts with the CRLY magic.
func IsRelay(b []byte) bool { return len(b) >= 4 && string(b[:4]) == relayMagic }

// AppendProbeHeader appends an SMPR header to b.
func AppendProbeHeader(b []byte, h ProbeHeader) []byte {
	b = append(b, probeMagic...)
	b = append(b, h.Type)
	b = binary.BigEndian.AppendUint64(b, h.TxID)
	return binary.BigEndian.AppendUint64(b, uint64(h.Timestamp))
}

// ParseProbeHeader decodes the SMPR header at the start of b and returns the rest.
func ParseProbeHeader(b []byte) (ProbeHeader, []byte, error) {
	var h ProbeHeader
	if len(b) < ProbeHeaderSize {
		return h, nil, errShort
	}
	if string(b[:4]) != probeMagic {
		return h, nil, errMagic
	}
	h.Type = b[4]
	h.TxID = binary.BigEndian.Uint64(b[5:13])
	h.Timestamp = int64(binary.BigEndian.Uint64(b[13:21]))
	return h, b[ProbeHeaderSize:], nil
}

// signedHelloBytes is what a hello signature covers.
func appendHelloSigned(b []byte, h *Hello) []byte {
	b = append(b, helloContext...)
	b = AppendProbeHeader(b, h.ProbeHeader)
	b = append(b, h.From[:]...)
	b = binary.BigEndian.AppendUint64(b, h.PoWNonce)
	return append(b, h.To[:]...)
}

// NewHello builds and signs a hello from kp to peer.
func NewHello(kp *pki.Keypair, to pki.Identity, txID uint64, now int64) *Hello {
	h := &Hello{ProbeHeader: ProbeHeader{Type: ProbeHello, TxID: txID, Timestamp: now}, From: kp.Identity(), PoWNonce: kp.Nonce(), To: to}
	copy(h.Sig[:], kp.Sign(appendHelloSigned(make([]byte, 0, 128), h)))
	return h
}

// AppendHello appends the encoded hello to b.
func AppendHello(b []byte, h *Hello) []byte {
	b = AppendProbeHeader(b, h.ProbeHeader)
	b = append(b, h.From[:]...)
	b = binary.BigEndian.AppendUint64(b, h.PoWNonce)
	b = append(b, h.To[:]...)
	return append(b, h.Sig[:]...)
}

// ParseHello decodes a hello probe (header included). It checks only the
// format; callers must call Verify.
func ParseHello(b []byte) (*Hello, error) {
	ph, body, err := ParseProbeHeader(b)
	if err != nil {
		return nil, err
	}
	if ph.Type != ProbeHello {
		return nil, errType
	}
	if len(body) != helloBodySize {
		return nil, errBadHello
	}
	h := &Hello{ProbeHeader: ph}
	copy(h.From[:], body[:32])
	h.PoWNonce = binary.BigEndian.Uint64(body[32:40])
	copy(h.To[:], body[40:72])
	copy(h.Sig[:], body[72:])
	return h, nil
}

// Verify checks the hello's signature. scratch may be nil.
func (h *Hello) Verify(scratch []byte) bool {
	return h.From.Verify(appendHelloSigned(scratch[:0], h), h.Sig[:])
}

// RelayHeader is the fixed part of a CRLY frame.
type RelayHeader struct {
	Session [16]byte
}

// AppendRelayHeader appends a CRLY header to b.
func AppendRelayHeader(b []byte, h RelayHeader) []byte {
	b = append(b, relayMagic...)
	return append(b, h.Session[:]...)
}

// ParseRelayHeader decodes a CRLY header and returns the QUIC payload.
func ParseRelayHeader(b []byte) (RelayHeader, []byte, error) {
	var h RelayHeader
	if len(b) < RelayHeaderSize {
		return h, nil, errShort
	}
	if string(b[:4]) != relayMagic {
		return h, nil, errMagic
	}
	copy(h.Session[:], b[4:20])
	return h, b[RelayHeaderSize:], nil
}
