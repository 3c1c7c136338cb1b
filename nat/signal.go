package nat

import (
	"bytes"
	"errors"
	"net/netip"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
)

// The mesh relay signal: the payload of a gossipsub relay signal (which
// carries it to its target through the mesh, signed by its origin, at most
// 30 s old, deduplicated and rate limited per neighbour). It says: "I, the
// origin, want a connection with you through one of these relays; I allow
// sessions from you through them, and I am asking them for sessions to
// you". The target answers by asking one of the relays for a session to the
// origin (connecting to it first when it is not connected yet).
//
//	magic "KMRS" | count (1..MaxSignalRelays) | per relay: identity (32),
//	address count (0..MaxSignalAddrs), addresses (relay.AppendAddr)
//
// The parser is strict: bad magic, counts above their limits, invalid
// identities or addresses, and trailing bytes are errors.

// signalMagic starts every mesh relay signal, so the node can tell them
// from other payloads on the signal channel.
const signalMagic = "KMRS"

// Limits of a mesh relay signal.
const (
	// MaxSignalRelays bounds the relays one signal names.
	MaxSignalRelays = 3
	// MaxSignalAddrs bounds the addresses of one relay in a signal.
	MaxSignalAddrs = 4
	// MaxSignalSize is the longest mesh relay signal.
	MaxSignalSize = len(signalMagic) + 1 + MaxSignalRelays*(pki.IdentitySize+1+MaxSignalAddrs*(1+16+2))
)

// SignalRelay is one relay a mesh relay signal names, with where to reach
// it (the target may not be connected to it).
type SignalRelay struct {
	ID    pki.Identity
	Addrs []netip.AddrPort
}

// Errors of ParseSignal.
var (
	errSignalMagic = errors.New("nat: not a mesh relay signal")
	errSignalCount = errors.New("nat: mesh relay signal: bad count")
	errSignalShort = errors.New("nat: mesh relay signal truncated")
	errSignalTrail = errors.New("nat: mesh relay signal: trailing bytes")
)

// IsSignal reports whether b is a mesh relay signal (by its magic).
func IsSignal(b []byte) bool { return bytes.HasPrefix(b, []byte(signalMagic)) }

// AppendSignal appends a mesh relay signal naming relays. Relays beyond
// MaxSignalRelays and addresses beyond MaxSignalAddrs (or that name no
// peer) are left out.
func AppendSignal(b []byte, relays []SignalRelay) []byte {
	relays = relays[:min(len(relays), MaxSignalRelays)]
	b = append(b, signalMagic...)
	b = append(b, byte(len(relays)))
	for _, r := range relays {
		b = append(b, r.ID[:]...)
		var addrs []byte
		n := 0
		for _, a := range r.Addrs {
			if n == MaxSignalAddrs {
				break
			}
			if enc, err := relay.AppendAddr(addrs, a); err == nil {
				addrs, n = enc, n+1
			}
		}
		b = append(b, byte(n))
		b = append(b, addrs...)
	}
	return b
}

// ParseSignal decodes a mesh relay signal. Identities are checked as
// Ed25519 points (pki.IdentityFromBytes).
func ParseSignal(b []byte) ([]SignalRelay, error) {
	rest, ok := bytes.CutPrefix(b, []byte(signalMagic))
	if !ok {
		return nil, errSignalMagic
	}
	if len(b) > MaxSignalSize {
		return nil, errSignalTrail
	}
	if len(rest) < 1 {
		return nil, errSignalShort
	}
	n := int(rest[0])
	rest = rest[1:]
	if n < 1 || n > MaxSignalRelays {
		return nil, errSignalCount
	}
	out := make([]SignalRelay, 0, n)
	for range n {
		if len(rest) < pki.IdentitySize+1 {
			return nil, errSignalShort
		}
		id, err := pki.IdentityFromBytes(rest[:pki.IdentitySize])
		if err != nil {
			return nil, err
		}
		na := int(rest[pki.IdentitySize])
		rest = rest[pki.IdentitySize+1:]
		if na > MaxSignalAddrs {
			return nil, errSignalCount
		}
		r := SignalRelay{ID: id}
		if na > 0 {
			r.Addrs = make([]netip.AddrPort, 0, na)
		}
		for range na {
			var a netip.AddrPort
			if a, rest, err = relay.ParseAddr(rest); err != nil {
				return nil, err
			}
			r.Addrs = append(r.Addrs, a)
		}
		out = append(out, r)
	}
	if len(rest) != 0 {
		return nil, errSignalTrail
	}
	return out, nil
}
