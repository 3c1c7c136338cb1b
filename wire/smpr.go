package wire

import (
	"crypto/subtle"
	"encoding/binary"
	"net/netip"

	"lukechampine.com/blake3/guts"

	"github.com/korium/korium-tun/pki"
)

// Path probe (SMPR) header, as in the reference:
//
//	magic "SMPR" (4) | type (1) | transaction ID (8) | timestamp (8, unix ns, big endian)
//
// Both magics (SMPR, CRLY) begin with a byte that is a valid QUIC
// short-header first byte (0x40 bit set), so packets are told apart by the
// whole 4-byte magic, and our connection IDs never begin with the three
// bytes after it (smartsock/cid.go).
const (
	ProbeMagic      = "SMPR"
	ProbeHeaderSize = len(ProbeMagic) + 1 + 8 + 8
)

// Probe types.
const (
	// ProbeHello announces "identity From is at this source address" to
	// identity To, signed by From. It precedes every QUIC long-header
	// packet sent on a path that has not carried a completed handshake.
	ProbeHello byte = 1
	// ProbeRequest asks the peer to answer on the path it arrived on. A
	// request and its reply carry a MAC under a key both peers derive from
	// their QUIC session, so only the peer itself can answer a probe:
	// nobody who merely sends UDP packets can make a path look alive.
	ProbeRequest byte = 2
	// ProbeReply answers a request, echoing its transaction ID and
	// timestamp, and tells the requester the address it was seen from
	// (none when the request came through a relay).
	ProbeReply byte = 3
	// ProbeDialBack is sent by a helper, from a socket other than the one
	// we talk to, to the address it observed for us; the transaction ID is
	// the nonce we chose. Its arrival proves that unsolicited packets reach
	// us (we are public).
	ProbeDialBack byte = 4
)

// MACSize is the length of a probe MAC.
const MACSize = 16

// Sizes of encoded probes, header included. A reply's observed address is
// an address (MinAddrSize to MaxAddrSize bytes) or the byte 0 for none.
const (
	helloBodySize = 2*pki.IdentitySize + 8 + 64 // From, From's PoW nonce, To, signature
	HelloSize     = ProbeHeaderSize + helloBodySize
	RequestSize   = ProbeHeaderSize + pki.IdentitySize + MACSize
	MinReplySize  = ProbeHeaderSize + pki.IdentitySize + 1 + MACSize
	MaxReplySize  = ProbeHeaderSize + pki.IdentitySize + MaxAddrSize + MACSize
	DialBackSize  = ProbeHeaderSize
	// MaxProbeSize bounds every SMPR packet.
	MaxProbeSize = HelloSize
)

// Domain separation of what the identity key signs and the session key MACs.
const (
	helloContext    = "korium-tun smartsock hello v1\x00"
	probeMACContext = "korium-tun smartsock probe v2\x00" // v2: tagged observed address
	// HelloSignedSize is the length of what a hello signature covers: a
	// scratch buffer of this capacity makes Verify allocation-free.
	HelloSignedSize = len(helloContext) + ProbeHeaderSize + 2*pki.IdentitySize + 8
)

// IsProbe reports whether b starts with the SMPR magic.
func IsProbe(b []byte) bool { return len(b) >= 4 && string(b[:4]) == ProbeMagic }

// ProbeHeader is the fixed part of every SMPR packet.
type ProbeHeader struct {
	Type      byte
	TxID      uint64
	Timestamp int64 // unix nanoseconds of the sender's clock
}

// AppendProbeHeader appends an SMPR header to b.
func AppendProbeHeader(b []byte, h ProbeHeader) []byte {
	b = append(b, ProbeMagic...)
	b = append(b, h.Type)
	b = binary.BigEndian.AppendUint64(b, h.TxID)
	return binary.BigEndian.AppendUint64(b, uint64(h.Timestamp))
}

// ParseProbeHeader decodes the SMPR header at the start of b and returns the rest.
func ParseProbeHeader(b []byte) (ProbeHeader, []byte, error) {
	var h ProbeHeader
	if len(b) < ProbeHeaderSize {
		return h, nil, ErrTruncated
	}
	if string(b[:4]) != ProbeMagic {
		return h, nil, ErrMagic
	}
	h.Type = b[4]
	h.TxID = binary.BigEndian.Uint64(b[5:13])
	h.Timestamp = int64(binary.BigEndian.Uint64(b[13:21]))
	return h, b[ProbeHeaderSize:], nil
}

// Hello is a decoded hello probe. It is trusted only after Verify.
type Hello struct {
	ProbeHeader
	From     pki.Identity
	PoWNonce uint64 // From's proof of work, checked before the signature
	To       pki.Identity
	Sig      [64]byte
}

func appendHelloSigned(b []byte, h *Hello) []byte {
	b = append(b, helloContext...)
	b = AppendProbeHeader(b, h.ProbeHeader)
	b = append(b, h.From[:]...)
	b = binary.BigEndian.AppendUint64(b, h.PoWNonce)
	return append(b, h.To[:]...)
}

// NewHello builds and signs a hello from kp to peer.
func NewHello(kp *pki.Keypair, to pki.Identity, txID uint64, now int64) Hello {
	h := Hello{ProbeHeader: ProbeHeader{Type: ProbeHello, TxID: txID, Timestamp: now}, From: kp.Identity(), PoWNonce: kp.Nonce(), To: to}
	var buf [HelloSignedSize]byte
	copy(h.Sig[:], kp.Sign(appendHelloSigned(buf[:0], &h)))
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
func ParseHello(b []byte) (Hello, error) {
	var h Hello
	ph, body, err := ParseProbeHeader(b)
	if err != nil {
		return h, err
	}
	if ph.Type != ProbeHello {
		return h, ErrProbeType
	}
	if len(body) != helloBodySize {
		return h, ErrSize
	}
	h.ProbeHeader = ph
	copy(h.From[:], body[:32])
	h.PoWNonce = binary.BigEndian.Uint64(body[32:40])
	copy(h.To[:], body[40:72])
	copy(h.Sig[:], body[72:])
	return h, nil
}

// Verify checks the hello's signature. scratch (may be nil) is used for
// what the signature covers; with capacity HelloSignedSize nothing is
// allocated for it.
func (h *Hello) Verify(scratch []byte) bool {
	return h.From.Verify(appendHelloSigned(scratch[:0], h), h.Sig[:])
}

// Probe is a decoded request or reply. It is trusted only after CheckMAC.
type Probe struct {
	ProbeHeader
	From     pki.Identity
	Observed netip.AddrPort // replies only: where the request came from; invalid: none
	MAC      [MACSize]byte
}

// probeMAC computes the MAC of p for receiver to under key. It covers the
// header, both identities and, in a reply, the observed address as encoded.
//
// It is BLAKE3 keyed by key, computed as the one chunk it is (the input is
// far below guts.ChunkSize) on the stack: blake3.New put a 3 KiB Hasher on
// the heap for every probe sent and received, the larger part of what an
// idle node with 1,000 peers allocated (TestProbeMACMatchesBlake3,
// TestProbeMACDoesNotAllocate).
func probeMAC(key *[32]byte, p *Probe, to pki.Identity) [MACSize]byte {
	var buf [len(probeMACContext) + ProbeHeaderSize + 2*pki.IdentitySize + MaxAddrSize]byte
	b := append(buf[:0], probeMACContext...)
	b = AppendProbeHeader(b, p.ProbeHeader)
	b = append(b, p.From[:]...)
	b = append(b, to[:]...)
	if p.Type == ProbeReply {
		b = AppendAddr(b, p.Observed)
	}
	var kw [8]uint32
	for i := range kw {
		kw[i] = binary.LittleEndian.Uint32(key[4*i:])
	}
	n := guts.CompressChunk(b, &kw, 0, guts.FlagKeyedHash)
	n.Flags |= guts.FlagRoot
	full := guts.WordsToBytes(guts.CompressNode(n))
	var out [MACSize]byte
	copy(out[:], full[:])
	return out
}

// Seal sets p's MAC for receiver to.
func (p *Probe) Seal(key *[32]byte, to pki.Identity) { p.MAC = probeMAC(key, p, to) }

// CheckMAC reports whether p was sealed under key for receiver to.
func (p *Probe) CheckMAC(key *[32]byte, to pki.Identity) bool {
	m := probeMAC(key, p, to)
	return subtle.ConstantTimeCompare(m[:], p.MAC[:]) == 1
}

// AppendProbe appends the encoded request or reply.
func AppendProbe(b []byte, p *Probe) []byte {
	b = AppendProbeHeader(b, p.ProbeHeader)
	b = append(b, p.From[:]...)
	if p.Type == ProbeReply {
		b = AppendAddr(b, p.Observed)
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
	switch ph.Type {
	case ProbeRequest:
		if len(b) != RequestSize {
			return p, ErrSize
		}
	case ProbeReply:
		if len(b) < MinReplySize || len(b) > MaxReplySize {
			return p, ErrSize
		}
	default:
		return p, ErrProbeType
	}
	p.ProbeHeader = ph
	copy(p.From[:], body[:32])
	body = body[32:]
	if ph.Type == ProbeReply {
		if body[0] == 0 {
			body = body[1:] // no observed address
		} else {
			a, rest, err := ParseAddr(body)
			if err != nil {
				return Probe{}, err
			}
			p.Observed, body = a, rest
		}
	}
	if len(body) != MACSize {
		return Probe{}, ErrSize
	}
	copy(p.MAC[:], body)
	return p, nil
}

// AppendDialBack appends the dial-back packet carrying nonce, stamped now
// (unix ns).
func AppendDialBack(b []byte, nonce uint64, now int64) []byte {
	return AppendProbeHeader(b, ProbeHeader{Type: ProbeDialBack, TxID: nonce, Timestamp: now})
}

// ParseDialBack decodes a dial-back packet and returns its nonce.
func ParseDialBack(b []byte) (uint64, error) {
	h, _, err := ParseProbeHeader(b)
	switch {
	case err != nil:
		return 0, err
	case h.Type != ProbeDialBack:
		return 0, ErrProbeType
	case len(b) != DialBackSize:
		return 0, ErrSize
	}
	return h.TxID, nil
}
