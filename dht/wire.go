package dht

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
	"github.com/korium/korium-tun/wire"
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

var errTooLarge = errors.New("dht: message too large")

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

func appendContact(b []byte, c *Contact) []byte {
	b = append(b, c.Identity[:]...)
	b = binary.BigEndian.AppendUint64(b, c.Nonce)
	n := min(len(c.Addrs), MaxAddrs)
	b = append(b, byte(n))
	for _, a := range c.Addrs[:n] {
		b = wire.AppendAddr(b, a)
	}
	return b
}

// reader is wire's bounded reader with the dht's items; ids, if set,
// saves re-checking identities seen before.
type reader struct {
	wire.Reader
	ids *IdentityCache
}

func newReader(b []byte, ids *IdentityCache) *reader {
	return &reader{Reader: wire.NewReader(b), ids: ids}
}

// count reads a u8 count and checks it against max and against the bytes
// left (each element needs at least minSize bytes) before anyone allocates.
func (r *reader) count(max, minSize int, what string) int {
	n := int(r.U8())
	if r.Err() == nil && n > max {
		r.Fail(fmt.Errorf("dht: %d %s, at most %d allowed", n, what, max))
		return 0
	}
	return r.Count(n, max, minSize)
}

const minAddrSize = wire.MinAddrSize

// Largest encodings, for MaxMessageSize.
const (
	msgHeaderSize  = 2 // version, type
	maxAddrSize    = wire.MaxAddrSize
	maxContactSize = minContactSize + MaxAddrs*maxAddrSize
	// NODES, or VALUE without records (one more count byte): contacts.
	maxContactsReplySize = msgHeaderSize + 1 + 1 + MaxContactsPerMessage*maxContactSize
	// VALUE with records (and so no contacts).
	maxRecordsReplySize = msgHeaderSize + 1 + MaxRecordsPerMessage*MaxRecordSize + 1
	// STORE: the sender's contact and one record.
	maxStoreSize = msgHeaderSize + maxContactSize + MaxRecordSize
)

func (r *reader) addrs() []netip.AddrPort {
	n := r.count(MaxAddrs, minAddrSize, "addresses")
	if n == 0 {
		return nil
	}
	out := make([]netip.AddrPort, n)
	for i := range out {
		// wire refuses IPv4-mapped addresses in IPv6 form: one spelling
		// only, so a record's signed bytes are the bytes it arrived in.
		out[i] = r.Addr()
	}
	return out
}

const minContactSize = 32 + 8 + 1

// identity reads 32 bytes that must be a usable Ed25519 key
// (pki.IdentityFromBytes): the zero key, small-order and off-curve points
// name nobody, and several encodings of one point would give one peer
// several node IDs.
func (r *reader) identity() pki.Identity {
	b := r.Bytes(pki.IdentitySize)
	if r.Err() != nil {
		return pki.Identity{}
	}
	id, err := r.ids.parse(b)
	if err != nil {
		r.Fail(fmt.Errorf("dht: %w", err))
	}
	return id
}

func (r *reader) contact() Contact {
	var c Contact
	c.Identity = r.identity()
	c.Nonce = r.U64()
	c.Addrs = r.addrs()
	return c
}

func (r *reader) nodeID() NodeID {
	var n NodeID
	copy(n[:], r.Bytes(32))
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
	r := newReader(b, ids)
	if v := r.U8(); r.Err() == nil && v != wireVersion {
		return nil, fmt.Errorf("dht: wire version %d, want %d", v, wireVersion)
	}
	m := &message{Type: msgType(r.U8())}
	if r.Err() != nil {
		return nil, r.Err()
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
		m.PrefixBits = r.U8()
		if r.Err() == nil && m.PrefixBits != 0 && m.PrefixBits != smartaddr.HashBits {
			return nil, fmt.Errorf("dht: FIND_VALUE prefix of %d bits, want 0 or %d", m.PrefixBits, smartaddr.HashBits)
		}
	case msgStore:
		if r.Err() == nil {
			rec, rest, err := decodeRecord(r.Rest(), ids)
			if err != nil {
				return nil, err
			}
			m.Record = rec
			r.SetRest(rest)
		}
	case msgNodes:
		m.Contacts = r.contacts()
	case msgValue:
		n := r.count(MaxRecordsPerMessage, minRecordSize, "records")
		if n > 0 && r.Err() == nil {
			m.Records = make([]Record, 0, n)
			for i := 0; i < n && r.Err() == nil; i++ {
				rec, rest, err := decodeRecord(r.Rest(), ids)
				if err != nil {
					return nil, err
				}
				m.Records = append(m.Records, *rec)
				r.SetRest(rest)
			}
		}
		m.Contacts = r.contacts()
		if r.Err() == nil && len(m.Records) > 0 && len(m.Contacts) > 0 {
			// Contacts only help a lookup that found nothing; allowing both
			// would let one reply exceed MaxMessageSize's bound.
			return nil, errors.New("dht: VALUE with both records and contacts")
		}
	case msgStoreAck, msgError:
		m.Code = r.U8()
	}
	if r.Err() != nil {
		return nil, r.Err()
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("dht: %d trailing bytes after %v", r.Len(), m.Type)
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
