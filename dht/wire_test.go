package dht

import (
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/pki"
)

func sampleMessages(t testing.TB) []*message {
	kp := testKeypair(t, 7, 0)
	rec := signedRecord(t, kp, 3, time.Unix(1_900_000_000, 0),
		netip.MustParseAddrPort("198.18.0.1:4433"), netip.MustParseAddrPort("[2001:db8::1]:443"))
	rec.Relays = nil
	self := Contact{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:1")}}
	other := Contact{Identity: testKeypair(t, 8, 0).Identity(), Nonce: 9}
	var target NodeID
	target[0] = 0xab
	return []*message{
		{Type: msgPing, Sender: self},
		{Type: msgFindNode, Sender: self, Target: target},
		{Type: msgFindValue, Sender: self, Target: target, PrefixBits: 96},
		{Type: msgStore, Sender: self, Record: rec},
		{Type: msgPong},
		{Type: msgNodes, Contacts: []Contact{self, other}},
		{Type: msgValue, Records: []Record{*rec}},
		{Type: msgValue, Contacts: []Contact{other}},
		{Type: msgValue},
		{Type: msgStoreAck, Code: codeQuota},
		{Type: msgError, Code: codeRefused},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range sampleMessages(t) {
		b := appendMessage(nil, m)
		got, err := decodeMessage(b, nil)
		if err != nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
		if !bytes.Equal(appendMessage(nil, got), b) {
			t.Fatalf("%v: re-encoding differs", m.Type)
		}
		if m.Record != nil && !reflect.DeepEqual(m.Record.AppendBinary(nil), got.Record.AppendBinary(nil)) {
			t.Fatalf("%v: record differs", m.Type)
		}
		// Every strict prefix is rejected, never a panic.
		for i := 0; i < len(b); i++ {
			if _, err := decodeMessage(b[:i], nil); err == nil {
				t.Fatalf("%v: truncated to %d of %d bytes decoded", m.Type, i, len(b))
			}
		}
		if _, err := decodeMessage(append(b, 0), nil); err == nil {
			t.Fatalf("%v: trailing byte accepted", m.Type)
		}
	}
}

func TestDecodeRejectsLies(t *testing.T) {
	// A NODES message claiming 200 contacts in 10 bytes must fail before
	// allocating 200 contacts.
	b := []byte{wireVersion, byte(msgNodes), 200, 1, 2, 3}
	if _, err := decodeMessage(b, nil); err == nil {
		t.Fatal("accepted 200 contacts")
	}
	b = []byte{wireVersion, byte(msgNodes), MaxContactsPerMessage, 1}
	if _, err := decodeMessage(b, nil); err == nil {
		t.Fatal("accepted a count larger than the bytes left")
	}
	if _, err := decodeMessage(make([]byte, MaxMessageSize+1), nil); err != errTooLarge {
		t.Fatalf("oversized: %v", err)
	}
	if _, err := decodeMessage([]byte{2, byte(msgPong)}, nil); err == nil {
		t.Fatal("accepted version 2")
	}
	if _, err := decodeMessage([]byte{wireVersion, 77}, nil); err == nil {
		t.Fatal("accepted type 77")
	}
	// FIND_VALUE asks for an exact key or a SmartAddr's hash prefix only.
	fv := &message{Type: msgFindValue, PrefixBits: 64}
	if _, err := decodeMessage(appendMessage(nil, fv), nil); err == nil {
		t.Fatal("accepted a FIND_VALUE prefix of 64 bits")
	}
	// An IPv4 address spelled as IPv4-mapped IPv6 is a second spelling of
	// the same contact or record (the encoder writes family 4): refused, so
	// that every decoded message and record re-encodes to its input.
	kp := testKeypair(t, 7, 0)
	id := kp.Identity()
	mapped := netip.MustParseAddr("::ffff:198.18.0.1").As16()
	b = append(append([]byte{wireVersion, byte(msgNodes), 1}, id[:]...), make([]byte, 8)...)
	b = append(append(append(b, 1, 6), mapped[:]...), 0, 1)
	if _, err := decodeMessage(b, nil); err == nil || !strings.Contains(err.Error(), "IPv4-mapped") {
		t.Fatalf("IPv4-mapped IPv6 address: %v, want refused", err)
	}
	rec := signedRecord(t, kp, 1, time.Unix(1_900_000_000, 0), netip.MustParseAddrPort("198.18.0.1:1"))
	enc := rec.AppendBinary(nil)
	at := 32 + 8 + 8 + 8 + 1 // first address
	enc = append(append(append(enc[:at:at], 6), mapped[:]...), enc[at+1+4:]...)
	if _, err := DecodeRecord(enc); err == nil {
		t.Fatal("record with an IPv4-mapped IPv6 address decoded")
	}
	allocs := testing.AllocsPerRun(100, func() {
		decodeMessage([]byte{wireVersion, byte(msgNodes), 30, 0, 0}, nil)
	})
	if allocs > 2 {
		t.Fatalf("lying count allocated %v times", allocs)
	}
}

// checkDecoded asserts what every decoded record must satisfy: valid
// identities, one to MaxAddrs addresses that addrpolicy allows (loopback
// aside), at most MaxRelays relays.
func checkDecoded(t *testing.T, r *Record) {
	t.Helper()
	if err := r.Identity.Check(); err != nil {
		t.Fatalf("record owner: %v", err)
	}
	if len(r.Addrs) == 0 || len(r.Addrs) > MaxAddrs || len(r.Relays) > MaxRelays {
		t.Fatalf("record with %d addresses, %d relays", len(r.Addrs), len(r.Relays))
	}
	for _, a := range r.Addrs {
		if err := addrpolicy.Check(a, true); err != nil {
			t.Fatalf("record address: %v", err)
		}
	}
	for _, id := range r.Relays {
		if err := id.Check(); err != nil {
			t.Fatalf("record relay: %v", err)
		}
	}
}

// fuzzRecordSeeds are records that break one rule each, correctly signed.
func fuzzRecordSeeds(t testing.TB) [][]byte {
	kp := testKeypair(t, 9, 0)
	good := netip.MustParseAddrPort("198.18.0.1:1")
	sign := func(id pki.Identity, relays []pki.Identity, addrs ...netip.AddrPort) []byte {
		r := &Record{Identity: id, Nonce: kp.Nonce(), Addrs: addrs, Relays: relays, Seq: 1, Expires: time.Unix(1_900_000_000, 0)}
		copy(r.Sig[:], kp.Sign(r.SigningBytes()))
		return r.AppendBinary(nil)
	}
	return [][]byte{
		sign(kp.Identity(), nil, good),
		sign(kp.Identity(), []pki.Identity{kp.Identity()}, good, netip.MustParseAddrPort("[2001:db8::1]:443")),
		sign(kp.Identity(), nil, netip.MustParseAddrPort("127.0.0.1:53")),
		sign(kp.Identity(), nil),
		sign(kp.Identity(), nil, netip.MustParseAddrPort("0.0.0.0:1")),
		sign(kp.Identity(), nil, netip.MustParseAddrPort("[ff02::1]:1")),
		sign(pki.Identity{}, nil, good),
		sign(kp.Identity(), []pki.Identity{{1}}, good),
		make([]byte, minRecordSize),
	}
}

func FuzzDecodeMessage(f *testing.F) {
	for _, m := range sampleMessages(f) {
		f.Add(appendMessage(nil, m))
	}
	kp := testKeypair(f, 7, 0)
	for _, rec := range fuzzRecordSeeds(f) {
		sender := appendContact([]byte{wireVersion, byte(msgStore)}, &Contact{Identity: kp.Identity()})
		f.Add(append(sender, rec...))
		f.Add(append([]byte{wireVersion, byte(msgValue), 1}, append(rec, 0)...))
	}
	f.Add([]byte{})
	f.Add([]byte{wireVersion, byte(msgNodes), 255})
	f.Add(append([]byte{wireVersion, byte(msgNodes), 1}, make([]byte, 32+8+1)...)) // zero identity
	ids := NewIdentityCache(64)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b, ids)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes (one spelling per
		// message) and stays within the limits.
		if got := appendMessage(nil, m); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, got)
		}
		if len(b) > MaxMessageSize || len(m.Contacts) > MaxContactsPerMessage || len(m.Records) > MaxRecordsPerMessage {
			t.Fatal("limits exceeded")
		}
		if len(m.Records) > 0 && len(m.Contacts) > 0 {
			t.Fatal("VALUE with records and contacts")
		}
		contacts := m.Contacts
		if m.Type.isRequest() {
			contacts = append(contacts, m.Sender)
		}
		for _, c := range contacts {
			if len(c.Addrs) > MaxAddrs {
				t.Fatal("too many addresses")
			}
			if err := c.Identity.Check(); err != nil {
				t.Fatalf("contact: %v", err)
			}
		}
		for i := range m.Records {
			checkDecoded(t, &m.Records[i])
		}
		if m.Record != nil {
			checkDecoded(t, m.Record)
		}
	})
}

func FuzzDecodeRecord(f *testing.F) {
	for _, b := range fuzzRecordSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := DecodeRecord(b)
		if err != nil {
			return
		}
		checkDecoded(t, rec)
		if len(b) > MaxRecordSize {
			t.Fatal("limits exceeded")
		}
		if rec.encodedSize() != len(b) {
			t.Fatalf("encodedSize %d, input %d", rec.encodedSize(), len(b))
		}
		// Verification of arbitrary input returns, never panics.
		_ = rec.Verify(time.Unix(1_800_000_000, 0), 0, time.Hour)
	})
}

// MaxMessageSize is the DHT's real maximum: the largest message of each
// kind fits, decodes, and the largest of all is exactly MaxMessageSize.
func TestMaxMessageSizeIsTheLargestMessage(t *testing.T) {
	v6 := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}), 4433)
	}
	addrs := make([]netip.AddrPort, MaxAddrs)
	for i := range addrs {
		addrs[i] = v6(i)
	}
	var relays []pki.Identity
	for i := range MaxRelays {
		relays = append(relays, testKeypair(t, byte(100+i), 0).Identity())
	}
	bigRecord := func(seed byte) Record {
		kp := testKeypair(t, seed, 0)
		r := Record{Addrs: addrs, Relays: relays, Seq: 1, Expires: time.Unix(1_900_000_000, 0)}
		if err := r.Sign(kp); err != nil {
			t.Fatal(err)
		}
		if n := len(r.AppendBinary(nil)); n != MaxRecordSize {
			t.Fatalf("largest record has %d bytes, MaxRecordSize %d", n, MaxRecordSize)
		}
		return r
	}
	var contacts []Contact
	for i := range MaxContactsPerMessage {
		kp := testKeypair(t, byte(10+i), 0)
		contacts = append(contacts, Contact{Identity: kp.Identity(), Nonce: kp.Nonce(), Addrs: addrs})
	}
	var records []Record
	for i := range MaxRecordsPerMessage {
		records = append(records, bigRecord(byte(50+i)))
	}
	rec := bigRecord(60)
	largest := 0
	for name, m := range map[string]*message{
		"NODES":           {Type: msgNodes, Contacts: contacts},
		"VALUE, contacts": {Type: msgValue, Contacts: contacts},
		"VALUE, records":  {Type: msgValue, Records: records},
		"STORE":           {Type: msgStore, Sender: contacts[0], Record: &rec},
		"FIND_VALUE":      {Type: msgFindValue, Sender: contacts[0], PrefixBits: 96},
	} {
		b := appendMessage(nil, m)
		t.Logf("largest %s: %d bytes", name, len(b))
		if len(b) > MaxMessageSize {
			t.Fatalf("%s of %d bytes exceeds MaxMessageSize %d", name, len(b), MaxMessageSize)
		}
		if _, err := decodeMessage(b, nil); err != nil {
			t.Fatalf("largest %s: %v", name, err)
		}
		largest = max(largest, len(b))
	}
	if largest != MaxMessageSize {
		t.Fatalf("largest message %d bytes, MaxMessageSize %d: the bound is not tight", largest, MaxMessageSize)
	}
	both := appendMessage(nil, &message{Type: msgValue, Records: records[:1], Contacts: contacts[:1]})
	if _, err := decodeMessage(both, nil); err == nil {
		t.Fatal("VALUE with both records and contacts decoded")
	}
}
