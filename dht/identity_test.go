package dht

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
)

// badIdentities are 32-byte strings that are nobody's Ed25519 key.
func badIdentities(t testing.TB) map[string]pki.Identity {
	m := map[string]pki.Identity{
		"all zero":  {},
		"all FF":    pki.Identity(bytes.Repeat([]byte{0xff}, 32)),
		"off curve": {2},
	}
	for name, h := range map[string]string{
		"small order (identity point)": "0100000000000000000000000000000000000000000000000000000000000000",
		"small order (8-torsion)":      "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
	} {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		m[name] = pki.Identity(b)
	}
	return m
}

// Every identity the dht reads off the wire must be a valid point: a record's
// owner and relays, a contact in a reply, the sender of a request.
func TestBadIdentitiesRefusedByDecoders(t *testing.T) {
	kp := testKeypair(t, 1, 0)
	good := netip.MustParseAddrPort("198.18.0.1:4433")
	rec := signedRecord(t, kp, 1, time.Unix(1_900_000_000, 0), good)
	for name, bad := range badIdentities(t) {
		if err := bad.Check(); err == nil {
			t.Fatalf("%s: pki accepts it", name)
		}
		owner := *rec
		owner.Identity = bad
		relay := *rec
		relay.Relays = []pki.Identity{kp.Identity(), bad}
		sender := Contact{Identity: bad, Addrs: []netip.AddrPort{good}}
		for what, enc := range map[string][]byte{
			"record owner":     owner.AppendBinary(nil),
			"record relay":     relay.AppendBinary(nil),
			"contact in NODES": appendMessage(nil, &message{Type: msgNodes, Contacts: []Contact{{Identity: kp.Identity()}, {Identity: bad}}}),
			"contact in VALUE": appendMessage(nil, &message{Type: msgValue, Contacts: []Contact{{Identity: bad}}}),
			"PING sender":      appendMessage(nil, &message{Type: msgPing, Sender: sender}),
			"STORE sender":     appendMessage(nil, &message{Type: msgStore, Sender: sender, Record: rec}),
			"STORE record":     appendMessage(nil, &message{Type: msgStore, Sender: Contact{Identity: kp.Identity()}, Record: &owner}),
			"VALUE record":     appendMessage(nil, &message{Type: msgValue, Records: []Record{relay}}),
		} {
			var err error
			if strings.HasPrefix(what, "record") {
				_, err = DecodeRecord(enc)
			} else {
				_, err = decodeMessage(enc, NewIdentityCache(16))
			}
			if !errors.Is(err, pki.ErrBadIdentity) {
				t.Errorf("%s as %s: %v, want %v", name, what, err, pki.ErrBadIdentity)
			}
		}
	}
}

// The identity cache keeps only identities that passed the check, and stays
// within its size.
func TestIdentityCache(t *testing.T) {
	c := NewIdentityCache(8)
	for _, bad := range badIdentities(t) {
		for range 2 { // the second time must not be a cache hit
			if _, err := c.parse(bad[:]); err == nil {
				t.Fatal("cache accepted a bad identity")
			}
		}
	}
	if c.Len() != 0 {
		t.Fatalf("cache holds %d entries after only bad identities", c.Len())
	}
	for i := range 20 {
		id := testKeypair(t, byte(i+1), 0).Identity()
		got, err := c.parse(id[:])
		if err != nil || got != id {
			t.Fatalf("parse = %v, %v", got, err)
		}
		if _, err := c.parse(id[:]); err != nil {
			t.Fatal(err)
		}
	}
	if c.Len() != 8 {
		t.Fatalf("cache holds %d, cap 8", c.Len())
	}
}
