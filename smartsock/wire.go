package smartsock

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net/netip"

	"lukechampine.com/blake3"

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

// Path probe types beyond the hello. A request and its reply are
// authenticated with a MAC under a key both peers derive from their QUIC
// session (Conn.SetPathKey), so only the peer itself can answer a probe:
// nobody who merely sends UDP packets can make a path look alive.
const (
	// ProbeRequest asks the peer to answer on the path it arrived on.
	ProbeRequest byte = 2
	// ProbeReply answers a request, echoing its transaction ID and
	// timestamp, and tells the requester the address it was seen from.
	ProbeReply byte = 3
	// ProbeDialBack is sent by a helper from a fresh socket to the address
	// it observed for us; the transaction ID is the nonce we chose. Its
	// arrival proves that unsolicited packets reach us (we are public).
	ProbeDialBack byte = 4
)

// MACSize is the length of a probe MAC.
const MACSize = 16

// Sizes of encoded probes.
const (
	RequestSize  = ProbeHeaderSize + pki.IdentitySize + MACSize
	ReplySize    = ProbeHeaderSize + pki.IdentitySize + addrSize + MACSize
	DialBackSize = ProbeHeaderSize
	addrSize     = 16 + 2
)

const probeMACContext = "korium-tun smartsock probe v1\x00"

// Probe is a decoded request or reply. It is trusted only after CheckMAC.
type Probe struct {
	ProbeHeader
	From     pki.Identity
	Observed netip.AddrPort // replies only: where the request came from
	MAC      [MACSize]byte
}

// probeMAC computes the MAC of p for receiver to under key.
func probeMAC(key *[32]byte, p *Probe, to pki.Identity) [MACSize]byte {
	h := blake3.New(MACSize, key[:])
	var buf [len(probeMACContext) + ProbeHeaderSize + 2*pki.IdentitySize + addrSize]byte
	b := append(buf[:0], probeMACContext...)
	b = AppendProbeHeader(b, p.ProbeHeader)
	b = append(b, p.From[:]...)
	b = append(b, to[:]...)
	if p.Type == ProbeReply {
		b = appendAddr(b, p.Observed)
	}
	h.Write(b)
	var out [MACSize]byte
	h.Sum(out[:0])
	return out
}

// Seal sets p's MAC for receiver to.
func (p *Probe) Seal(key *[32]byte, to pki.Identity) { p.MAC = probeMAC(key, p, to) }

// CheckMAC reports whether p was sealed under key for receiver to.
func (p *Probe) CheckMAC(key *[32]byte, to pki.Identity) bool {
	m := probeMAC(key, p, to)
	return subtle.ConstantTimeCompare(m[:], p.MAC[:]) == 1
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr().As16()
	b = append(b, ip[:]...)
	return binary.BigEndian.AppendUint16(b, a.Port())
}

// AppendProbe appends the encoded request or reply.
func AppendProbe(b []byte, p *Probe) []byte {
	b = AppendProbeHeader(b, p.ProbeHeader)
	b = append(b, p.From[:]...)
	if p.Type == ProbeReply {
		b = appendAddr(b, p.Observed)
	}
	return append(b, p.MAC[:]...)
}

// ParseProbe decodes a request or reply (header included). It checks only
// the format; callers must check the MAC.
func ParseProbe(b []byte) (Probe, error) {
	var p Probe
	ph, body, err := ParseProbeHeader(b)
	if err != nil {
		return p, err
	}
	p.ProbeHeader = ph
	switch {
	case ph.Type == ProbeRequest && len(body) == RequestSize-ProbeHeaderSize:
	case ph.Type == ProbeReply && len(body) == ReplySize-ProbeHeaderSize:
	case ph.Type == ProbeRequest || ph.Type == ProbeReply:
		return p, errBadHello
	default:
		return p, errType
	}
	copy(p.From[:], body[:32])
	body = body[32:]
	if ph.Type == ProbeReply {
		ip := netip.AddrFrom16([16]byte(body[:16])).Unmap()
		p.Observed = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(body[16:18]))
		body = body[addrSize:]
	}
	copy(p.MAC[:], body)
	return p, nil
}
