package dht

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// Record is a node's signed contact record: how to reach it, published at
// the k nodes closest to its node ID. Records are self-certifying: the
// signature is by Identity, whose proof of work is Nonce. A newer Seq
// replaces an older one; an expired record is worthless.
type Record struct {
	Identity pki.Identity
	Nonce    uint64
	// Addrs are the node's reachable addresses: at least one, at most
	// MaxAddrs, each one others may send to (addrpolicy.Check with
	// loopback allowed; whether a loopback address may be dialled is the
	// reader's decision, see Config.AllowLoopback).
	Addrs []netip.AddrPort
	// Relays are identities of relays that forward to the node, at most
	// MaxRelays (empty until relays exist).
	Relays []pki.Identity
	// Seq orders records of one identity; higher wins. It is the signing
	// time in Unix nanoseconds (Publish keeps it increasing when the clock
	// steps back), so Verify refuses a record more than MaxClockSkew ahead
	// of the verifier's clock: one signed ahead of time, or by a node whose
	// clock runs fast, would shadow every newer record of its identity until
	// it expired.
	Seq uint64
	// Expires is when the record stops being valid (second precision).
	Expires time.Time
	// Sig is Identity's Ed25519 signature of SigningBytes.
	Sig [ed25519.SignatureSize]byte
}

// recordDomain separates record signatures from every other use of the key.
const recordDomain = "korium-tun dht record v1\x00"

// minRecordSize is the encoding with no addresses or relays.
const minRecordSize = 32 + 8 + 8 + 8 + 1 + 1 + ed25519.SignatureSize

// MaxRecordSize is the largest encoded record.
const MaxRecordSize = minRecordSize + MaxAddrs*maxAddrSize + MaxRelays*32

// ID returns the record owner's node ID.
func (r *Record) ID() NodeID { return IDOf(r.Identity) }

// Contact returns the record as a routing contact.
func (r *Record) Contact() Contact {
	return Contact{Identity: r.Identity, Nonce: r.Nonce, Addrs: r.Addrs}
}

func (r *Record) appendBody(b []byte) []byte {
	b = append(b, r.Identity[:]...)
	b = binary.BigEndian.AppendUint64(b, r.Nonce)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Expires.Unix()))
	n := min(len(r.Addrs), MaxAddrs)
	b = append(b, byte(n))
	for _, a := range r.Addrs[:n] {
		b = wire.AppendAddr(b, a)
	}
	n = min(len(r.Relays), MaxRelays)
	b = append(b, byte(n))
	for _, id := range r.Relays[:n] {
		b = append(b, id[:]...)
	}
	return b
}

// SigningBytes returns the bytes the signature covers: a domain string and
// the encoding without the signature.
func (r *Record) SigningBytes() []byte {
	return r.appendBody([]byte(recordDomain))
}

// AppendBinary appends the wire encoding of r to b.
func (r *Record) AppendBinary(b []byte) []byte {
	b = r.appendBody(b)
	return append(b, r.Sig[:]...)
}

// MaxClockSkew is how far ahead of our clock a record's signing time (Seq)
// may be.
const MaxClockSkew = 5 * time.Second

// Sign fills Identity, Nonce and Sig from kp. It fails if the record has no
// address, more addresses or relays than the wire allows, or an address
// nobody may be sent to (see Addrs).
func (r *Record) Sign(kp *pki.Keypair) error {
	if len(r.Addrs) == 0 {
		return errors.New("dht: record has no address: give the node an address others can reach")
	}
	if len(r.Addrs) > MaxAddrs {
		return fmt.Errorf("dht: record has %d addresses, at most %d allowed", len(r.Addrs), MaxAddrs)
	}
	if err := checkRecordAddrs(r.Addrs, true); err != nil {
		return err
	}
	if len(r.Relays) > MaxRelays {
		return fmt.Errorf("dht: record has %d relays, at most %d allowed", len(r.Relays), MaxRelays)
	}
	r.Identity = kp.Identity()
	r.Nonce = kp.Nonce()
	r.Expires = time.Unix(r.Expires.Unix(), 0)
	copy(r.Sig[:], kp.Sign(r.SigningBytes()))
	return nil
}

// Record verification errors, wrapped by Verify.
var (
	ErrBadSignature = errors.New("bad signature")
	ErrBadPoW       = errors.New("insufficient proof of work")
	ErrExpired      = errors.New("expired")
	ErrFarFuture    = errors.New("expiry too far in the future")
	ErrFuture       = errors.New("signed in the future")
	ErrBadAddr      = errors.New("an address we may not send to")
)

// checkRecordAddrs refuses an address that fails addrpolicy.Check.
func checkRecordAddrs(addrs []netip.AddrPort, allowLoopback bool) error {
	for _, a := range addrs {
		if err := addrpolicy.Check(a, allowLoopback); err != nil {
			return fmt.Errorf("dht: record address: %w: %w", ErrBadAddr, err)
		}
	}
	return nil
}

// Verify checks that the record expires after now and no later than
// now+maxTTL, that it was not signed more than MaxClockSkew after now (Seq),
// and then its proof of work and signature (VerifySigned).
func (r *Record) Verify(now time.Time, powBits int, maxTTL time.Duration) error {
	if !r.Expires.After(now) {
		return fmt.Errorf("dht: record of %s: %w", r.Identity.Short(), ErrExpired)
	}
	if r.Expires.After(now.Add(maxTTL)) {
		return fmt.Errorf("dht: record of %s: %w", r.Identity.Short(), ErrFarFuture)
	}
	if r.Seq > uint64(now.Add(MaxClockSkew).UnixNano()) {
		return fmt.Errorf("dht: record of %s: %w (%v ahead of our clock, at most %v allowed)",
			r.Identity.Short(), ErrFuture, time.Duration(r.Seq-uint64(now.UnixNano())).Round(time.Millisecond), MaxClockSkew)
	}
	return r.VerifySigned(powBits)
}

// VerifySigned checks what a record proves whatever the clock says: its
// owner's proof of work against powBits and its signature. A record kept
// past its expiry (the peer cache) is checked with it.
func (r *Record) VerifySigned(powBits int) error {
	if err := pki.CheckPoW(r.Identity, r.Nonce, powBits); err != nil {
		return fmt.Errorf("dht: record: %w: %v", ErrBadPoW, err)
	}
	if !r.Identity.Verify(r.SigningBytes(), r.Sig[:]) {
		return fmt.Errorf("dht: record of %s: %w", r.Identity.Short(), ErrBadSignature)
	}
	return nil
}

// DecodeRecord parses exactly one encoded record (no trailing bytes). It
// refuses invalid identities (owner and relays), a record without
// addresses and addresses nobody may be sent to (see Record.Addrs), but
// does not verify the signature.
func DecodeRecord(b []byte) (*Record, error) {
	r, rest, err := decodeRecord(b, nil)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("dht: %d trailing bytes after record", len(rest))
	}
	return r, nil
}

func decodeRecord(b []byte, ids *IdentityCache) (*Record, []byte, error) {
	rd := newReader(b, ids)
	var r Record
	r.Identity = rd.identity()
	r.Nonce = rd.U64()
	r.Seq = rd.U64()
	exp := rd.U64()
	if rd.Err() == nil && exp > 1<<40 {
		rd.Fail(fmt.Errorf("dht: record expiry %d out of range", exp))
	}
	r.Expires = time.Unix(int64(exp), 0)
	r.Addrs = rd.addrs()
	if rd.Err() == nil {
		if len(r.Addrs) == 0 {
			rd.Fail(errors.New("dht: record without addresses"))
		} else if err := checkRecordAddrs(r.Addrs, true); err != nil {
			rd.Fail(err)
		}
	}
	n := rd.count(MaxRelays, 32, "relays")
	if n > 0 {
		r.Relays = make([]pki.Identity, n)
		for i := range r.Relays {
			r.Relays[i] = rd.identity()
		}
	}
	copy(r.Sig[:], rd.Bytes(ed25519.SignatureSize))
	if rd.Err() != nil {
		return nil, nil, rd.Err()
	}
	return &r, rd.Rest(), nil
}

// encodedSize returns the size of r's encoding without building it.
func (r *Record) encodedSize() int {
	n := minRecordSize + 32*min(len(r.Relays), MaxRelays)
	for _, a := range r.Addrs[:min(len(r.Addrs), MaxAddrs)] {
		n += wire.AddrSize(a)
	}
	return n
}
