package dht

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// Wire format (version 1). Every message is
//
//	version u8 = 1 | type u8 | body
//
// Integers are big-endian. An address is family u8 (4 or 6), 4 or 16 address
// bytes, port u16. A contact is identity [32] | nonce u64 | naddrs u8 |
// addrs. Requests carry the sender's contact after the type byte; the
// sender's identity must equal the identity the RPC layer authenticated.
// Decoders check every count against MaxAddrs, MaxContactsPerMessage, ...
// and against the bytes left before allocating, and return errors, never
// panic.
const wireVersion = 1

type msgType uint8

const (
	msgPing msgType = iota + 1
	msgFindNode
	msgFindValue
	msgStore
	msgPong
	msgNodes
	msgValue
	msgStoreAck
	msgError
)

func (t msgType) isRequest() bool { return t >= msgPing && t <= msgStore }

func (t msgType) String() string {
	switch t {
	case msgPing:
		return "PING"
	case msgFindNode:
		return "FIND_NODE"
	case msgFindValue:
		return "FIND_VALUE"
	case msgStore:
		return "STORE"
	case msgPong:
		return "PONG"
	case msgNodes:
		return "NODES"
	case msgValue:
		return "VALUE"
	case msgStoreAck:
		return "STORE_ACK"
	case msgError:
		return "ERROR"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Status codes of STORE_ACK and ERROR.
const (
	codeOK uint8 = iota
	codeInvalid
	codeQuota
	codeStale
	codeRefused
)

// message is the decoded form of every DHT message. Which fields are set
// depends on Type.
type message struct {
	Type       msgType
	Sender     Contact   // requests
	Target     NodeID    // FIND_NODE, FIND_VALUE
	PrefixBits uint8     // FIND_VALUE: 0 = exact key, or smartaddr.HashBits leading bits
	Record     *Record   // STORE
	Contacts   []Contact // NODES, VALUE
	Records    []Record  // VALUE
	Code       uint8     // STORE_ACK, ERROR
}

var (
	errShort    = errors.New("dht: message truncated")
	errTooLarge = errors.New("dht: message too large")
)

// Contact is how to reach a node: its identity, its proof of work and its
// addresses. Contacts in responses are not signed; the addresses are hints
// that the transport verifies by authenticating the identity (those
// addrpolicy refuses are dropped unread), and a contact enters the routing
// table only after it answered us, at the one address it answered from.
type Contact struct {
	Identity pki.Identity
	Nonce    uint64
	Addrs    []netip.AddrPort
}

// ID returns the contact's node ID.
func (c Contact) ID() NodeID { return IDOf(c.Identity) }

// addr returns the first address, or the zero AddrPort. For a routing-table
// contact it is the only one: the address the contact answered us from,
// which latency tiers and diversity caps are keyed by.
func (c Contact) addr() netip.AddrPort {
	if len(c.Addrs) == 0 {
		return netip.AddrPort{}
	}
	return c.Addrs[0]
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr().Unmap()
	if ip.Is4() {
		b = append(b, 4)
		v := ip.As4()
		b = append(b, v[:]...)
	} else {
		b = append(b, 6)
		v := ip.As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port())
}

func appendContact(b []byte, c *Contact) []byte {
	b = append(b, c.Identity[:]...)
	b = binary.BigEndian.AppendUint64(b, c.Nonce)
	n := min(len(c.Addrs), MaxAddrs)
	b = append(b, byte(n))
	for _, a := range c.Addrs[:n] {
		b = appendAddr(b, a)
	}
	return b
}

// reader is a bounds-checked cursor; the first error sticks. ids, if set,
// saves re-checking identities seen before.
type reader struct {
	b   []byte
	err error
	ids *IdentityCache
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.fail(errShort)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	v := r.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u16() uint16 {
	v := r.take(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (r *reader) u64() uint64 {
	v := r.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// count reads a u8 count and checks it against max and against the bytes
// left (each element needs at least minSize bytes) before anyone allocates.
func (r *reader) count(max, minSize int, what string) int {
	n := int(r.u8())
	if r.err != nil {
		return 0
	}
	if n > max {
		r.fail(fmt.Errorf("dht: %d %s, at most %d allowed", n, what, max))
		return 0
	}
	if n*minSize > len(r.b) {
		r.fail(errShort)
		return 0
	}
	return n
}

const minAddrSize = 1 + 4 + 2

// Largest encodings, for MaxMessageSize.
const (
	msgHeaderSize  = 2 // version, type
	maxAddrSize    = 1 + 16 + 2
	maxContactSize = minContactSize + MaxAddrs*maxAddrSize
	// NODES, or VALUE without records (one more count byte): contacts.
	maxContactsReplySize = msgHeaderSize + 1 + 1 + MaxContactsPerMessage*maxContactSize
	// VALUE with records (and so no contacts).
	maxRecordsReplySize = msgHeaderSize + 1 + MaxRecordsPerMessage*MaxRecordSize + 1
	// STORE: the sender's contact and one record.
	maxStoreSize = msgHeaderSize + maxContactSize + MaxRecordSize
)

func (r *reader) addr() netip.AddrPort {
	switch fam := r.u8(); fam {
	case 4:
		v := r.take(4)
		port := r.u16()
		if r.err != nil {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(v)), port)
	case 6:
		v := r.take(16)
		port := r.u16()
		if r.err != nil {
			return netip.AddrPort{}
		}
		a := netip.AddrFrom16([16]byte(v))
		if a.Is4In6() {
			// appendAddr writes these as family 4: one spelling only, so a
			// record's signed bytes are the bytes it arrived in.
			r.fail(fmt.Errorf("dht: IPv4-mapped address %v in IPv6 form", a))
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(a, port)
	default:
		r.fail(fmt.Errorf("dht: address family %d", fam))
		return netip.AddrPort{}
	}
}

func (r *reader) addrs() []netip.AddrPort {
	n := r.count(MaxAddrs, minAddrSize, "addresses")
	if n == 0 {
		return nil
	}
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = r.addr()
	}
	return out
}

const minContactSize = 32 + 8 + 1

// identity reads 32 bytes that must be a usable Ed25519 key
// (pki.IdentityFromBytes): the zero key, small-order and off-curve points
// name nobody, and several encodings of one point would give one peer
// several node IDs.
func (r *reader) identity() pki.Identity {
	b := r.take(pki.IdentitySize)
	if r.err != nil {
		return pki.Identity{}
	}
	id, err := r.ids.parse(b)
	if err != nil {
		r.fail(fmt.Errorf("dht: %w", err))
	}
	return id
}

func (r *reader) contact() Contact {
	var c Contact
	c.Identity = r.identity()
	c.Nonce = r.u64()
	c.Addrs = r.addrs()
	return c
}

func (r *reader) nodeID() NodeID {
	var n NodeID
	copy(n[:], r.take(32))
	return n
}

// appendMessage appends the encoding of m to b.
func appendMessage(b []byte, m *message) []byte {
	b = append(b, wireVersion, byte(m.Type))
	if m.Type.isRequest() {
		b = appendContact(b, &m.Sender)
	}
	switch m.Type {
	case msgFindNode:
		b = append(b, m.Target[:]...)
	case msgFindValue:
		b = append(b, m.Target[:]...)
		b = append(b, m.PrefixBits)
	case msgStore:
		b = m.Record.AppendBinary(b)
	case msgNodes:
		b = appendContacts(b, m.Contacts)
	case msgValue:
		n := min(len(m.Records), MaxRecordsPerMessage)
		b = append(b, byte(n))
		for i := range m.Records[:n] {
			b = m.Records[i].AppendBinary(b)
		}
		b = appendContacts(b, m.Contacts)
	case msgStoreAck, msgError:
		b = append(b, m.Code)
	}
	return b
}

func appendContacts(b []byte, cs []Contact) []byte {
	n := min(len(cs), MaxContactsPerMessage)
	b = append(b, byte(n))
	for i := range cs[:n] {
		b = appendContact(b, &cs[i])
	}
	return b
}

// decodeMessage parses one message. It rejects inputs above MaxMessageSize,
// trailing bytes, unknown versions and types, out-of-range counts and
// invalid identities (checked through ids, which may be nil).
func decodeMessage(b []byte, ids *IdentityCache) (*message, error) {
	if len(b) > MaxMessageSize {
		return nil, errTooLarge
	}
	r := &reader{b: b, ids: ids}
	if v := r.u8(); r.err == nil && v != wireVersion {
		return nil, fmt.Errorf("dht: wire version %d, want %d", v, wireVersion)
	}
	m := &message{Type: msgType(r.u8())}
	if r.err != nil {
		return nil, r.err
	}
	if m.Type < msgPing || m.Type > msgError {
		return nil, fmt.Errorf("dht: unknown message type %d", uint8(m.Type))
	}
	if m.Type.isRequest() {
		m.Sender = r.contact()
	}
	switch m.Type {
	case msgFindNode:
		m.Target = r.nodeID()
	case msgFindValue:
		m.Target = r.nodeID()
		m.PrefixBits = r.u8()
		if r.err == nil && m.PrefixBits != 0 && m.PrefixBits != smartaddr.HashBits {
			return nil, fmt.Errorf("dht: FIND_VALUE prefix of %d bits, want 0 or %d", m.PrefixBits, smartaddr.HashBits)
		}
	case msgStore:
		if r.err == nil {
			rec, rest, err := decodeRecord(r.b, ids)
			if err != nil {
				return nil, err
			}
			m.Record = rec
			r.b = rest
		}
	case msgNodes:
		m.Contacts = r.contacts()
	case msgValue:
		n := r.count(MaxRecordsPerMessage, minRecordSize, "records")
		if n > 0 && r.err == nil {
			m.Records = make([]Record, 0, n)
			for i := 0; i < n && r.err == nil; i++ {
				rec, rest, err := decodeRecord(r.b, ids)
				if err != nil {
					return nil, err
				}
				m.Records = append(m.Records, *rec)
				r.b = rest
			}
		}
		m.Contacts = r.contacts()
		if r.err == nil && len(m.Records) > 0 && len(m.Contacts) > 0 {
			// Contacts only help a lookup that found nothing; allowing both
			// would let one reply exceed MaxMessageSize's bound.
			return nil, errors.New("dht: VALUE with both records and contacts")
		}
	case msgStoreAck, msgError:
		m.Code = r.u8()
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("dht: %d trailing bytes after %v", len(r.b), m.Type)
	}
	return m, nil
}

func (r *reader) contacts() []Contact {
	n := r.count(MaxContactsPerMessage, minContactSize, "contacts")
	if n == 0 {
		return nil
	}
	out := make([]Contact, n)
	for i := range out {
		out[i] = r.contact()
	}
	return out
}
