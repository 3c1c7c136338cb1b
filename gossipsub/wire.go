package gossipsub

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// Wire format (all integers big-endian). An RPC is a version byte followed by
// at most one section of each kind, in increasing tag order:
//
//	rpc      = version(1)=2 *section
//	section  = tag(1) count(2) count*item
//	topic    = len(1, 1..255) bytes
//	subs     tag 1: flag(1: 1 subscribe, 0 unsubscribe) topic
//	msgs     tag 2: from(32) seqno(8) time(8) topic datalen(4) data sig(64)
//	ihave    tag 3: topic n(2) n*msgid(40)
//	iwant    tag 4: msgid(40)
//	graft    tag 5: topic
//	prune    tag 6: topic backoff-seconds(4)
//	idontwant tag 7: msgid(40)
//	relay    tag 8: target(32) origin(32) nonce(8) time(8) hops(1) len(2) payload sig(64)
//
// time is the publish (or send) time in Unix milliseconds, signed with the
// rest: the router refuses messages and signals outside its age window.
// Version 2 added it; a version 1 RPC is refused as malformed.
//
// Decoders check every count and length against the bytes left and the
// Limits before allocating, and return errors, never panic.

const (
	wireVersion = 2

	tagSubs      = 1
	tagMsgs      = 2
	tagIHave     = 3
	tagIWant     = 4
	tagGraft     = 5
	tagPrune     = 6
	tagIDontWant = 7
	tagRelay     = 8

	// MsgIDSize is the size of a message ID: publisher identity and seqno.
	MsgIDSize = pki.IdentitySize + 8
	sigSize   = 64

	// MaxTopicLen is the longest topic name in bytes.
	MaxTopicLen = 255

	// msgFixedSize is a message's encoding without its topic's and
	// data's bytes: from, seqno, timestamp, topic length, data length,
	// signature. A topic has at least one byte.
	msgFixedSize = pki.IdentitySize + 8 + 8 + 1 + 4 + sigSize
	minMsgSize   = msgFixedSize + 1
	// minRelaySize is a relay signal's encoding without its payload.
	minRelaySize = 2*pki.IdentitySize + 8 + 8 + 1 + 2 + sigSize
	// sectionHeader is a section's tag and 16-bit count.
	sectionHeader = 3
)

// MsgID identifies a message: the publisher's identity followed by its
// big-endian sequence number. It is what IHAVE, IWANT and IDONTWANT carry.
type MsgID [MsgIDSize]byte

// MakeMsgID builds the ID of a message from its publisher and seqno.
func MakeMsgID(from pki.Identity, seqno uint64) MsgID {
	var id MsgID
	copy(id[:], from[:])
	binary.BigEndian.PutUint64(id[pki.IdentitySize:], seqno)
	return id
}

// From returns the publisher part of the ID.
func (m MsgID) From() pki.Identity {
	var id pki.Identity
	copy(id[:], m[:pki.IdentitySize])
	return id
}

// Seqno returns the sequence number part of the ID.
func (m MsgID) Seqno() uint64 { return binary.BigEndian.Uint64(m[pki.IdentitySize:]) }

func (m MsgID) String() string { return hex.EncodeToString(m[:4]) + "/" + fmt.Sprint(m.Seqno()) }

// SubOpt is a subscription change announced by a peer.
type SubOpt struct {
	Subscribe bool
	Topic     string
}

// WireMessage is a published message as it travels: signed by From over
// topic, seqno, publish time, data and from (see signedBytes).
type WireMessage struct {
	From      pki.Identity
	Seqno     uint64
	Timestamp uint64 // publish time, Unix milliseconds
	Topic     string
	Data      []byte
	Sig       [sigSize]byte
}

// ID returns the message ID.
func (m *WireMessage) ID() MsgID { return MakeMsgID(m.From, m.Seqno) }

// IHave advertises message IDs held in the cache for one topic.
type IHave struct {
	Topic string
	IDs   []MsgID
}

// Prune removes the receiver from the sender's mesh for Topic and asks it not
// to GRAFT again for Backoff seconds.
type Prune struct {
	Topic   string
	Backoff uint32
}

// RelaySignal carries an opaque payload from Origin to Target through mesh
// peers. Hops is decremented at each forward and is not signed.
type RelaySignal struct {
	Target    pki.Identity
	Origin    pki.Identity
	Nonce     uint64
	Timestamp uint64 // send time, Unix milliseconds
	Hops      uint8
	Payload   []byte
	Sig       [sigSize]byte
}

// RPC is one unit exchanged between two routers.
type RPC struct {
	Subs      []SubOpt
	Msgs      []WireMessage
	IHave     []IHave
	IWant     []MsgID
	Graft     []string
	Prune     []Prune
	IDontWant []MsgID
	Relay     []RelaySignal
}

// Empty reports whether the RPC carries nothing.
func (r *RPC) Empty() bool {
	return len(r.Subs) == 0 && len(r.Msgs) == 0 && len(r.IHave) == 0 && len(r.IWant) == 0 &&
		len(r.Graft) == 0 && len(r.Prune) == 0 && len(r.IDontWant) == 0 && len(r.Relay) == 0
}

// Limits bounds what DecodeRPC accepts. The zero value of a field means its
// default (DefaultLimits).
type Limits struct {
	MaxRPCSize      int // whole RPC in bytes; default 1 MiB
	MaxMessageSize  int // data of one message; default 64 KiB
	MaxSubs         int // subscription changes per RPC; default 1000
	MaxMsgs         int // messages per RPC; default 64
	MaxIHaveIDs     int // message IDs over all IHAVE entries of one RPC; default 5000
	MaxIHaveTopics  int // IHAVE entries per RPC; default 100
	MaxIWant        int // IWANT IDs per RPC; default 5000
	MaxControl      int // GRAFT and PRUNE entries each per RPC; default 1000
	MaxIDontWant    int // IDONTWANT IDs per RPC; default 1000
	MaxRelay        int // relay signals per RPC; default 16
	MaxRelayPayload int // payload of one relay signal; default 4096
}

// DefaultLimits returns the limits used when a field is zero.
func DefaultLimits() Limits {
	return Limits{
		MaxRPCSize:      1 << 20,
		MaxMessageSize:  64 << 10,
		MaxSubs:         1000,
		MaxMsgs:         64,
		MaxIHaveIDs:     5000,
		MaxIHaveTopics:  100,
		MaxIWant:        5000,
		MaxControl:      1000,
		MaxIDontWant:    1000,
		MaxRelay:        16,
		MaxRelayPayload: 4096,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	setDefault(&l.MaxRPCSize, d.MaxRPCSize)
	setDefault(&l.MaxMessageSize, d.MaxMessageSize)
	setDefault(&l.MaxSubs, d.MaxSubs)
	setDefault(&l.MaxMsgs, d.MaxMsgs)
	setDefault(&l.MaxIHaveIDs, d.MaxIHaveIDs)
	setDefault(&l.MaxIHaveTopics, d.MaxIHaveTopics)
	setDefault(&l.MaxIWant, d.MaxIWant)
	setDefault(&l.MaxControl, d.MaxControl)
	setDefault(&l.MaxIDontWant, d.MaxIDontWant)
	setDefault(&l.MaxRelay, d.MaxRelay)
	setDefault(&l.MaxRelayPayload, d.MaxRelayPayload)
	return l
}

// Decode errors. Every DecodeRPC error wraps ErrMalformed, and those caused
// by a limit also wrap ErrTooLarge.
var (
	ErrMalformed = errors.New("gossipsub: malformed rpc")
	ErrTooLarge  = errors.New("gossipsub: rpc exceeds limit")
)

func errf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
}

func errLimit(what string, n, limit int) error {
	return fmt.Errorf("%w: %w: %s %d > %d", ErrMalformed, ErrTooLarge, what, n, limit)
}

// ---- encoding ----

func appendTopic(b []byte, t string) []byte {
	b = append(b, byte(len(t)))
	return append(b, t...)
}

func appendMsgID(b []byte, id MsgID) []byte { return append(b, id[:]...) }

// AppendMessage appends the encoding of one message (without section header).
func AppendMessage(b []byte, m *WireMessage) []byte {
	b = append(b, m.From[:]...)
	b = binary.BigEndian.AppendUint64(b, m.Seqno)
	b = binary.BigEndian.AppendUint64(b, m.Timestamp)
	b = appendTopic(b, m.Topic)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Data)))
	b = append(b, m.Data...)
	return append(b, m.Sig[:]...)
}

// AppendRelaySignal appends the encoding of one relay signal.
func AppendRelaySignal(b []byte, s *RelaySignal) []byte {
	b = append(b, s.Target[:]...)
	b = append(b, s.Origin[:]...)
	b = binary.BigEndian.AppendUint64(b, s.Nonce)
	b = binary.BigEndian.AppendUint64(b, s.Timestamp)
	b = append(b, s.Hops)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.Payload)))
	b = append(b, s.Payload...)
	return append(b, s.Sig[:]...)
}

func appendHeader(b []byte, tag byte, n int) []byte {
	b = append(b, tag)
	return binary.BigEndian.AppendUint16(b, uint16(n))
}

// encodedLen is len(AppendRPC(nil, r)), so EncodeRPCs allocates each
// encoding once at its size (appending from nil grew an IHAVE of 250 ids
// four times) and splits an RPC too large for one without encoding it
// first. TestEncodedLen holds it to AppendRPC.
func encodedLen(r *RPC) int {
	n := 1 // version
	section := func(items int) {
		if items > 0 {
			n += sectionHeader
		}
	}
	section(len(r.Subs))
	for _, s := range r.Subs {
		n += 2 + len(s.Topic)
	}
	section(len(r.Msgs))
	for i := range r.Msgs {
		n += msgFixedSize + len(r.Msgs[i].Topic) + len(r.Msgs[i].Data)
	}
	section(len(r.IHave))
	for _, ih := range r.IHave {
		n += 1 + len(ih.Topic) + 2 + len(ih.IDs)*MsgIDSize
	}
	section(len(r.IWant))
	n += len(r.IWant) * MsgIDSize
	section(len(r.Graft))
	for _, t := range r.Graft {
		n += 1 + len(t)
	}
	section(len(r.Prune))
	for _, p := range r.Prune {
		n += 1 + len(p.Topic) + 4
	}
	section(len(r.IDontWant))
	n += len(r.IDontWant) * MsgIDSize
	section(len(r.Relay))
	for i := range r.Relay {
		n += minRelaySize + len(r.Relay[i].Payload)
	}
	return n
}

// AppendRPC appends the encoding of r. Topics must be 1..255 bytes and
// counts below 65536; the router never builds anything else (Validate checks
// callers' topics), so encoding cannot fail.
func AppendRPC(b []byte, r *RPC) []byte {
	b = append(b, wireVersion)
	if len(r.Subs) > 0 {
		b = appendHeader(b, tagSubs, len(r.Subs))
		for _, s := range r.Subs {
			if s.Subscribe {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
			b = appendTopic(b, s.Topic)
		}
	}
	if len(r.Msgs) > 0 {
		b = appendHeader(b, tagMsgs, len(r.Msgs))
		for i := range r.Msgs {
			b = AppendMessage(b, &r.Msgs[i])
		}
	}
	if len(r.IHave) > 0 {
		b = appendHeader(b, tagIHave, len(r.IHave))
		for _, ih := range r.IHave {
			b = appendTopic(b, ih.Topic)
			b = binary.BigEndian.AppendUint16(b, uint16(len(ih.IDs)))
			for _, id := range ih.IDs {
				b = appendMsgID(b, id)
			}
		}
	}
	if len(r.IWant) > 0 {
		b = appendHeader(b, tagIWant, len(r.IWant))
		for _, id := range r.IWant {
			b = appendMsgID(b, id)
		}
	}
	if len(r.Graft) > 0 {
		b = appendHeader(b, tagGraft, len(r.Graft))
		for _, t := range r.Graft {
			b = appendTopic(b, t)
		}
	}
	if len(r.Prune) > 0 {
		b = appendHeader(b, tagPrune, len(r.Prune))
		for _, p := range r.Prune {
			b = appendTopic(b, p.Topic)
			b = binary.BigEndian.AppendUint32(b, p.Backoff)
		}
	}
	if len(r.IDontWant) > 0 {
		b = appendHeader(b, tagIDontWant, len(r.IDontWant))
		for _, id := range r.IDontWant {
			b = appendMsgID(b, id)
		}
	}
	if len(r.Relay) > 0 {
		b = appendHeader(b, tagRelay, len(r.Relay))
		for i := range r.Relay {
			b = AppendRelaySignal(b, &r.Relay[i])
		}
	}
	return b
}

// ---- decoding ----

// reader is wire's bounded reader; what names the item in its errors.
type reader struct{ wire.Reader }

func newReader(b []byte) reader { return reader{wire.NewReader(b)} }

func (r *reader) bytes(n int, what string) []byte {
	if r.Err() == nil && (n < 0 || r.Len() < n) {
		r.Fail(errf("truncated %s: need %d bytes, have %d", what, n, r.Len()))
	}
	return r.Bytes(n)
}

func (r *reader) u8(what string) byte {
	v := r.bytes(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u16(what string) int {
	v := r.bytes(2, what)
	if v == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(v))
}

func (r *reader) u32(what string) uint32 {
	v := r.bytes(4, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (r *reader) u64(what string) uint64 {
	v := r.bytes(8, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (r *reader) topic() string {
	n := int(r.u8("topic length"))
	if r.Err() != nil {
		return ""
	}
	if n == 0 {
		r.Fail(errf("empty topic"))
		return ""
	}
	return string(r.bytes(n, "topic"))
}

func (r *reader) identity(what string) pki.Identity {
	var id pki.Identity
	copy(id[:], r.bytes(pki.IdentitySize, what))
	return id
}

func (r *reader) msgID() MsgID {
	var id MsgID
	copy(id[:], r.bytes(MsgIDSize, "message id"))
	return id
}

// count reads an item count and checks it against the limit and against the
// bytes left, given the smallest possible item, before anything is allocated.
func (r *reader) count(what string, limit, minItem int) int {
	n := r.u16(what + " count")
	if r.Err() != nil {
		return 0
	}
	if n == 0 {
		r.Fail(errf("empty %s section", what))
		return 0
	}
	if n > limit {
		r.Fail(errLimit(what, n, limit))
		return 0
	}
	if n*minItem > r.Len() {
		r.Fail(errf("%d %s need at least %d bytes, have %d", n, what, n*minItem, r.Len()))
		return 0
	}
	return r.Count(n, limit, minItem)
}

func (r *reader) message(maxData int) WireMessage {
	var m WireMessage
	m.From = r.identity("from")
	m.Seqno = r.u64("seqno")
	m.Timestamp = r.u64("publish time")
	m.Topic = r.topic()
	n := r.u32("data length")
	if r.Err() != nil {
		return m
	}
	if int64(n) > int64(maxData) {
		r.Fail(errLimit("message data", int(n), maxData))
		return m
	}
	data := r.bytes(int(n), "data")
	if r.Err() != nil {
		return m
	}
	m.Data = append([]byte(nil), data...)
	copy(m.Sig[:], r.bytes(sigSize, "signature"))
	return m
}

func (r *reader) relay(maxPayload int) RelaySignal {
	var s RelaySignal
	s.Target = r.identity("relay target")
	s.Origin = r.identity("relay origin")
	s.Nonce = r.u64("relay nonce")
	s.Timestamp = r.u64("relay time")
	s.Hops = r.u8("relay hops")
	n := r.u16("relay payload length")
	if r.Err() != nil {
		return s
	}
	if n > maxPayload {
		r.Fail(errLimit("relay payload", n, maxPayload))
		return s
	}
	p := r.bytes(n, "relay payload")
	if r.Err() != nil {
		return s
	}
	s.Payload = append([]byte(nil), p...)
	copy(s.Sig[:], r.bytes(sigSize, "relay signature"))
	return s
}

// DecodeMessage decodes one message encoded by AppendMessage, with nothing
// after it.
func DecodeMessage(b []byte, lim Limits) (WireMessage, error) {
	lim = lim.withDefaults()
	r := newReader(b)
	m := r.message(lim.MaxMessageSize)
	if r.Err() == nil && r.Len() != 0 {
		r.Fail(errf("%d trailing bytes after message", r.Len()))
	}
	return m, r.Err()
}

// DecodeRelaySignal decodes one relay signal encoded by AppendRelaySignal,
// with nothing after it.
func DecodeRelaySignal(b []byte, lim Limits) (RelaySignal, error) {
	lim = lim.withDefaults()
	r := newReader(b)
	s := r.relay(lim.MaxRelayPayload)
	if r.Err() == nil && r.Len() != 0 {
		r.Fail(errf("%d trailing bytes after relay signal", r.Len()))
	}
	return s, r.Err()
}

// DecodeRPC decodes an RPC encoded by AppendRPC, enforcing lim.
func DecodeRPC(b []byte, lim Limits) (*RPC, error) {
	lim = lim.withDefaults()
	if len(b) > lim.MaxRPCSize {
		return nil, errLimit("rpc bytes", len(b), lim.MaxRPCSize)
	}
	r := newReader(b)
	if v := r.u8("version"); r.Err() == nil && v != wireVersion {
		return nil, errf("unknown version %d", v)
	}
	out := &RPC{}
	last := 0
	ihaveIDs := 0
	for r.Err() == nil && r.Len() > 0 {
		tag := int(r.u8("section tag"))
		if tag <= last {
			r.Fail(errf("section %d out of order after %d", tag, last))
			break
		}
		last = tag
		switch tag {
		case tagSubs:
			n := r.count("subscriptions", lim.MaxSubs, 3)
			out.Subs = make([]SubOpt, 0, n)
			for i := 0; i < n && r.Err() == nil; i++ {
				f := r.u8("subscribe flag")
				if f > 1 {
					r.Fail(errf("subscribe flag %d", f))
				}
				out.Subs = append(out.Subs, SubOpt{Subscribe: f == 1, Topic: r.topic()})
			}
		case tagMsgs:
			n := r.count("messages", lim.MaxMsgs, minMsgSize)
			out.Msgs = make([]WireMessage, 0, n)
			for i := 0; i < n && r.Err() == nil; i++ {
				out.Msgs = append(out.Msgs, r.message(lim.MaxMessageSize))
			}
		case tagIHave:
			n := r.count("ihave entries", lim.MaxIHaveTopics, 4)
			out.IHave = make([]IHave, 0, n)
			for i := 0; i < n && r.Err() == nil; i++ {
				ih := IHave{Topic: r.topic()}
				k := r.u16("ihave id count")
				if r.Err() != nil {
					break
				}
				ihaveIDs += k
				if ihaveIDs > lim.MaxIHaveIDs {
					r.Fail(errLimit("ihave ids", ihaveIDs, lim.MaxIHaveIDs))
					break
				}
				if k*MsgIDSize > r.Len() {
					r.Fail(errf("%d ihave ids need %d bytes, have %d", k, k*MsgIDSize, r.Len()))
					break
				}
				ih.IDs = make([]MsgID, k)
				for j := range ih.IDs {
					ih.IDs[j] = r.msgID()
				}
				out.IHave = append(out.IHave, ih)
			}
		case tagIWant:
			n := r.count("iwant ids", lim.MaxIWant, MsgIDSize)
			out.IWant = make([]MsgID, n)
			for i := range out.IWant {
				out.IWant[i] = r.msgID()
			}
		case tagGraft:
			n := r.count("grafts", lim.MaxControl, 2)
			out.Graft = make([]string, 0, n)
			for i := 0; i < n && r.Err() == nil; i++ {
				out.Graft = append(out.Graft, r.topic())
			}
		case tagPrune:
			n := r.count("prunes", lim.MaxControl, 6)
			out.Prune = make([]Prune, 0, n)
			for i := 0; i < n && r.Err() == nil; i++ {
				p := Prune{Topic: r.topic()}
				p.Backoff = r.u32("prune backoff")
				out.Prune = append(out.Prune, p)
			}
		case tagIDontWant:
			n := r.count("idontwant ids", lim.MaxIDontWant, MsgIDSize)
			out.IDontWant = make([]MsgID, n)
			for i := range out.IDontWant {
				out.IDontWant[i] = r.msgID()
			}
		case tagRelay:
			n := r.count("relay signals", lim.MaxRelay, minRelaySize)
			out.Relay = make([]RelaySignal, 0, n)
			for i := 0; i < n && r.Err() == nil; i++ {
				out.Relay = append(out.Relay, r.relay(lim.MaxRelayPayload))
			}
		default:
			r.Fail(errf("unknown section tag %d", tag))
		}
	}
	if r.Err() != nil {
		return nil, r.Err()
	}
	return out, nil
}

// ---- signatures ----

const (
	msgSigDomain   = "korium-gossipsub-msg-v2\x00"
	relaySigDomain = "korium-gossipsub-relay-v2\x00"
)

// signedBytes is what a publisher signs: a domain tag, then topic, seqno,
// publish time, data and from, each length-prefixed where variable, so no
// two messages share signed bytes.
func signedBytes(b []byte, m *WireMessage) []byte {
	b = append(b, msgSigDomain...)
	b = appendTopic(b, m.Topic)
	b = binary.BigEndian.AppendUint64(b, m.Seqno)
	b = binary.BigEndian.AppendUint64(b, m.Timestamp)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Data)))
	b = append(b, m.Data...)
	return append(b, m.From[:]...)
}

func relaySignedBytes(b []byte, s *RelaySignal) []byte {
	b = append(b, relaySigDomain...)
	b = append(b, s.Target[:]...)
	b = append(b, s.Origin[:]...)
	b = binary.BigEndian.AppendUint64(b, s.Nonce)
	b = binary.BigEndian.AppendUint64(b, s.Timestamp)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.Payload)))
	return append(b, s.Payload...)
}

// Signer signs with a node's private key; *pki.Keypair implements it.
type Signer interface {
	Identity() pki.Identity
	Sign(msg []byte) []byte
}

// SignMessage fills m.From and m.Sig; the caller sets m.Timestamp.
func SignMessage(s Signer, m *WireMessage) {
	m.From = s.Identity()
	copy(m.Sig[:], s.Sign(signedBytes(nil, m)))
}

// VerifyMessage reports whether m.Sig is m.From's signature of m.
func VerifyMessage(m *WireMessage) bool {
	ok, _ := verifyMessage(m, nil)
	return ok
}

// verifyMessage is VerifyMessage building the signed bytes in buf's
// storage, which it returns for the next call: the router verifies every
// message it receives with one buffer instead of one allocation each.
func verifyMessage(m *WireMessage, buf []byte) (ok bool, scratch []byte) {
	buf = signedBytes(buf[:0], m)
	return m.From.Verify(buf, m.Sig[:]), buf
}

// SignRelaySignal fills s.Origin and s.Sig; the caller sets s.Timestamp.
func SignRelaySignal(k Signer, s *RelaySignal) {
	s.Origin = k.Identity()
	copy(s.Sig[:], k.Sign(relaySignedBytes(nil, s)))
}

// VerifyRelaySignal reports whether s.Sig is s.Origin's signature of s.
func VerifyRelaySignal(s *RelaySignal) bool {
	return s.Origin.Verify(relaySignedBytes(nil, s), s.Sig[:])
}

func validTopic(t string) bool { return len(t) >= 1 && len(t) <= MaxTopicLen }

// countsFit reports whether every section of r is within the counts of lim.
func countsFit(r *RPC, lim Limits) bool {
	ids := 0
	for _, ih := range r.IHave {
		ids += len(ih.IDs)
	}
	return len(r.Subs) <= lim.MaxSubs && len(r.Msgs) <= lim.MaxMsgs && len(r.IHave) <= lim.MaxIHaveTopics &&
		ids <= lim.MaxIHaveIDs && len(r.IWant) <= lim.MaxIWant && len(r.Graft) <= lim.MaxControl &&
		len(r.Prune) <= lim.MaxControl && len(r.IDontWant) <= lim.MaxIDontWant && len(r.Relay) <= lim.MaxRelay
}

// EncodeRPCs encodes r as one RPC when it fits lim (counts and MaxRPCSize),
// otherwise as several that each do, so a receiver with the same limits
// accepts all of them. An IHAVE entry longer than MaxIHaveIDs is truncated;
// a message too large for MaxRPCSize on its own is dropped.
func EncodeRPCs(r *RPC, lim Limits) [][]byte {
	lim = lim.withDefaults()
	if r.Empty() {
		return nil
	}
	if countsFit(r, lim) {
		if n := encodedLen(r); n <= lim.MaxRPCSize {
			return [][]byte{AppendRPC(make([]byte, 0, n), r)}
		}
	}
	var out [][]byte
	emit := func(x *RPC) {
		if !x.Empty() {
			if n := encodedLen(x); n <= lim.MaxRPCSize {
				out = append(out, AppendRPC(make([]byte, 0, n), x))
			}
		}
	}
	chunk := func(n, max int, f func(lo, hi int)) {
		for lo := 0; lo < n; lo += max {
			f(lo, min(lo+max, n))
		}
	}
	chunk(len(r.Subs), lim.MaxSubs, func(lo, hi int) { emit(&RPC{Subs: r.Subs[lo:hi]}) })
	var msgs []WireMessage
	size := 0
	for _, m := range r.Msgs {
		sz := minMsgSize + len(m.Topic) + len(m.Data)
		if len(msgs) == lim.MaxMsgs || (len(msgs) > 0 && size+sz > lim.MaxRPCSize-16) {
			emit(&RPC{Msgs: msgs})
			msgs, size = nil, 0
		}
		msgs = append(msgs, m)
		size += sz
	}
	emit(&RPC{Msgs: msgs})
	var ihs []IHave
	ids := 0
	for _, ih := range r.IHave {
		if len(ih.IDs) > lim.MaxIHaveIDs {
			ih.IDs = ih.IDs[:lim.MaxIHaveIDs]
		}
		if len(ihs) == lim.MaxIHaveTopics || ids+len(ih.IDs) > lim.MaxIHaveIDs {
			emit(&RPC{IHave: ihs})
			ihs, ids = nil, 0
		}
		ihs = append(ihs, ih)
		ids += len(ih.IDs)
	}
	emit(&RPC{IHave: ihs})
	chunk(len(r.IWant), lim.MaxIWant, func(lo, hi int) { emit(&RPC{IWant: r.IWant[lo:hi]}) })
	chunk(len(r.Graft), lim.MaxControl, func(lo, hi int) { emit(&RPC{Graft: r.Graft[lo:hi]}) })
	chunk(len(r.Prune), lim.MaxControl, func(lo, hi int) { emit(&RPC{Prune: r.Prune[lo:hi]}) })
	chunk(len(r.IDontWant), lim.MaxIDontWant, func(lo, hi int) { emit(&RPC{IDontWant: r.IDontWant[lo:hi]}) })
	chunk(len(r.Relay), lim.MaxRelay, func(lo, hi int) { emit(&RPC{Relay: r.Relay[lo:hi]}) })
	return out
}
