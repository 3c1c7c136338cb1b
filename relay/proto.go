// Package relay owns the relay protocol: the messages that travel as
// rpc.ProtoRelay payloads between a node and a relay, and (in relay/server)
// the relay's session table and CRLY forwarder. The CRLY frame itself is
// smartsock's wire format; this package never redefines it.
//
// Every message, request or response, begins with its type byte, so a
// response to the wrong request is rejected by its parser. All parsers are
// strict: a message shorter or longer than its format says is an error, and
// nothing is allocated for a count before the count is checked against its
// limit and against the bytes actually present.
//
// Addresses are encoded as family (1 byte, 4 or 6), the address (4 or 16
// bytes) and the port (2 bytes, big endian). IPv4-mapped IPv6 addresses are
// unmapped on both sides; port 0, the unspecified address, multicast
// addresses and zoned addresses are refused, since none of them names a
// peer a relay may send to.
//
// relay imports pki and the standard library only, so that a client can
// speak the protocol without linking the server or the overlay.
package relay

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/korium/korium-tun/pki"
)

// Message types: the first byte of every relay payload.
const (
	// MsgObserve asks the responder which UDP address it sees the
	// requester at, and whether it relays.
	MsgObserve byte = 1
	// MsgConnect asks a relay to open a session to a target identity.
	MsgConnect byte = 2
	// MsgIncoming is sent by a relay to the target of a new session.
	MsgIncoming byte = 3
	// MsgPunch exchanges candidate addresses for hole punching.
	MsgPunch byte = 4
)

// FlagRelays is bit 0 of the observe response flags: the responder is
// publicly reachable and relays for others.
const FlagRelays byte = 1 << 0

// FlagNoDialBack is bit 1 of the observe response flags: the responder
// sent no dial-back (it had too many waiting), so its answer says where it
// sees the asker but nothing of whether the asker can be reached. An asker
// that ignores the bit takes the missing dial-back for a NAT.
const FlagNoDialBack byte = 1 << 1

// MaxCandidates caps the address list of a punch message.
const MaxCandidates = 8

// SessionIDSize is the length of a relay session ID, as in the CRLY header.
const SessionIDSize = 16

// Sizes of the fixed-length messages, type byte included.
const (
	observeReqSize   = 1 + 8
	connectReqSize   = 1 + pki.IdentitySize
	connectRespSize  = 1 + SessionIDSize
	incomingReqSize  = 1 + SessionIDSize + pki.IdentitySize
	incomingRespSize = 1
	minAddrSize      = 1 + 4 + 2
	maxAddrSize      = 1 + 16 + 2
)

// MaxMessageSize is the longest relay message, request or response: a
// punch message with MaxCandidates IPv6 addresses (the others are shorter
// and of fixed size). The node caps rpc.ProtoRelay payloads at it.
const MaxMessageSize = 2 + MaxCandidates*maxAddrSize

// Errors returned by the parsers and by the encoders that take addresses.
var (
	// ErrTruncated: the message ends before its format says it does.
	ErrTruncated = errors.New("relay: message truncated")
	// ErrTrailing: bytes follow the end of the message.
	ErrTrailing = errors.New("relay: trailing bytes after message")
	// ErrType: the type byte is not the one this parser reads.
	ErrType = errors.New("relay: wrong message type")
	// ErrAddr: an address has an unknown family or names no peer
	// (port 0, unspecified, multicast, zoned).
	ErrAddr = errors.New("relay: invalid address")
	// ErrTooMany: a punch message lists more than MaxCandidates addresses.
	ErrTooMany = errors.New("relay: too many candidate addresses")
)

// ObserveResp answers MsgObserve.
type ObserveResp struct {
	Addr  netip.AddrPort // the requester's UDP address as the responder sees it
	Flags byte           // FlagRelays; unknown bits are kept, not refused
}

// Incoming is the MsgIncoming request a relay sends to a session's target.
type Incoming struct {
	Session [SessionIDSize]byte
	From    pki.Identity // the requester of the session
}

// Type returns the message type of a relay payload, for dispatch.
func Type(b []byte) (byte, error) {
	if len(b) == 0 {
		return 0, ErrTruncated
	}
	return b[0], nil
}

// AppendObserveReq appends a MsgObserve request.
func AppendObserveReq(b []byte, nonce uint64) []byte {
	b = append(b, MsgObserve)
	return binary.BigEndian.AppendUint64(b, nonce)
}

// ParseObserveReq decodes a MsgObserve request and returns its nonce.
func ParseObserveReq(b []byte) (uint64, error) {
	if err := checkFixed(b, MsgObserve, observeReqSize); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}

// AppendObserveResp appends a MsgObserve response. It fails with ErrAddr
// if r.Addr names no peer.
func AppendObserveResp(b []byte, r ObserveResp) ([]byte, error) {
	b = append(b, MsgObserve)
	b, err := AppendAddr(b, r.Addr)
	if err != nil {
		return nil, err
	}
	return append(b, r.Flags), nil
}

// ParseObserveResp decodes a MsgObserve response.
func ParseObserveResp(b []byte) (ObserveResp, error) {
	var r ObserveResp
	if err := checkType(b, MsgObserve); err != nil {
		return r, err
	}
	ap, rest, err := ParseAddr(b[1:])
	if err != nil {
		return r, err
	}
	if len(rest) < 1 {
		return r, ErrTruncated
	}
	if len(rest) > 1 {
		return r, ErrTrailing
	}
	r.Addr, r.Flags = ap, rest[0]
	return r, nil
}

// AppendConnectReq appends a MsgConnect request for target.
func AppendConnectReq(b []byte, target pki.Identity) []byte {
	b = append(b, MsgConnect)
	return append(b, target[:]...)
}

// ParseConnectReq decodes a MsgConnect request and returns its target.
func ParseConnectReq(b []byte) (pki.Identity, error) {
	var id pki.Identity
	if err := checkFixed(b, MsgConnect, connectReqSize); err != nil {
		return id, err
	}
	copy(id[:], b[1:])
	return id, nil
}

// AppendConnectResp appends a MsgConnect response carrying the session ID.
func AppendConnectResp(b []byte, session [SessionIDSize]byte) []byte {
	b = append(b, MsgConnect)
	return append(b, session[:]...)
}

// ParseConnectResp decodes a MsgConnect response and returns the session ID.
func ParseConnectResp(b []byte) ([SessionIDSize]byte, error) {
	var s [SessionIDSize]byte
	if err := checkFixed(b, MsgConnect, connectRespSize); err != nil {
		return s, err
	}
	copy(s[:], b[1:])
	return s, nil
}

// AppendIncomingReq appends a MsgIncoming request.
func AppendIncomingReq(b []byte, in Incoming) []byte {
	b = append(b, MsgIncoming)
	b = append(b, in.Session[:]...)
	return append(b, in.From[:]...)
}

// ParseIncomingReq decodes a MsgIncoming request.
func ParseIncomingReq(b []byte) (Incoming, error) {
	var in Incoming
	if err := checkFixed(b, MsgIncoming, incomingReqSize); err != nil {
		return in, err
	}
	copy(in.Session[:], b[1:1+SessionIDSize])
	copy(in.From[:], b[1+SessionIDSize:])
	return in, nil
}

// AppendIncomingResp appends the (empty) acceptance of a MsgIncoming
// request. A target that declines answers with rpc.RefuseError instead.
func AppendIncomingResp(b []byte) []byte { return append(b, MsgIncoming) }

// ParseIncomingResp checks a MsgIncoming acceptance.
func ParseIncomingResp(b []byte) error {
	return checkFixed(b, MsgIncoming, incomingRespSize)
}

// AppendPunch appends a MsgPunch message (request and response share the
// format). It fails with ErrTooMany above MaxCandidates addresses and with
// ErrAddr if one of them names no peer.
func AppendPunch(b []byte, addrs []netip.AddrPort) ([]byte, error) {
	if len(addrs) > MaxCandidates {
		return nil, ErrTooMany
	}
	b = append(b, MsgPunch, byte(len(addrs)))
	for _, ap := range addrs {
		var err error
		if b, err = AppendAddr(b, ap); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// ParsePunch decodes a MsgPunch message, appending its addresses to dst
// (which may be nil) and returning the extended slice. The count is checked
// against MaxCandidates and against the bytes present before dst grows.
func ParsePunch(dst []netip.AddrPort, b []byte) ([]netip.AddrPort, error) {
	if err := checkType(b, MsgPunch); err != nil {
		return dst, err
	}
	if len(b) < 2 {
		return dst, ErrTruncated
	}
	n := int(b[1])
	if n > MaxCandidates {
		return dst, ErrTooMany
	}
	rest := b[2:]
	if len(rest) < n*minAddrSize {
		return dst, ErrTruncated
	}
	dst = growAddrs(dst, n)
	start := len(dst)
	for range n {
		ap, r, err := ParseAddr(rest)
		if err != nil {
			return dst[:start], err
		}
		dst, rest = append(dst, ap), r
	}
	if len(rest) != 0 {
		return dst[:start], ErrTrailing
	}
	return dst, nil
}

// growAddrs makes room for n more addresses in one allocation at most.
func growAddrs(dst []netip.AddrPort, n int) []netip.AddrPort {
	if cap(dst)-len(dst) >= n {
		return dst
	}
	s := make([]netip.AddrPort, len(dst), len(dst)+n)
	copy(s, dst)
	return s
}

// ValidAddr reports whether ap can name a peer: a valid, unzoned unicast
// address that is not unspecified, with a non-zero port. ap is expected to
// be unmapped already.
func ValidAddr(ap netip.AddrPort) bool {
	a := ap.Addr()
	return a.IsValid() && ap.Port() != 0 && !a.IsUnspecified() && !a.IsMulticast() && a.Zone() == ""
}

// Unmap returns ap with an IPv4-mapped IPv6 address turned into IPv4, so
// that one peer address has one form.
func Unmap(ap netip.AddrPort) netip.AddrPort {
	if !ap.Addr().Is4In6() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// AppendAddr appends ap in the relay address encoding. It fails with ErrAddr
// if ap, once unmapped, names no peer (see ValidAddr).
func AppendAddr(b []byte, ap netip.AddrPort) ([]byte, error) {
	ap = Unmap(ap)
	if !ValidAddr(ap) {
		return nil, ErrAddr
	}
	a := ap.Addr()
	if a.Is4() {
		v := a.As4()
		b = append(b, 4)
		b = append(b, v[:]...)
	} else {
		v := a.As16()
		b = append(b, 6)
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port()), nil
}

// ParseAddr decodes one address at the start of b and returns the rest.
// IPv4-mapped IPv6 addresses come back as IPv4.
func ParseAddr(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, ErrTruncated
	}
	var a netip.Addr
	switch b[0] {
	case 4:
		if len(b) < 1+4+2 {
			return netip.AddrPort{}, nil, ErrTruncated
		}
		a = netip.AddrFrom4([4]byte(b[1:5]))
		b = b[5:]
	case 6:
		if len(b) < 1+16+2 {
			return netip.AddrPort{}, nil, ErrTruncated
		}
		a = netip.AddrFrom16([16]byte(b[1:17])).Unmap()
		b = b[17:]
	default:
		return netip.AddrPort{}, nil, ErrAddr
	}
	ap := netip.AddrPortFrom(a, binary.BigEndian.Uint16(b))
	if !ValidAddr(ap) {
		return netip.AddrPort{}, nil, ErrAddr
	}
	return ap, b[2:], nil
}

func checkType(b []byte, t byte) error {
	if len(b) < 1 {
		return ErrTruncated
	}
	if b[0] != t {
		return ErrType
	}
	return nil
}

func checkFixed(b []byte, t byte, size int) error {
	if err := checkType(b, t); err != nil {
		return err
	}
	if len(b) < size {
		return ErrTruncated
	}
	if len(b) > size {
		return ErrTrailing
	}
	return nil
}
