package smartsock

import (
	"encoding/binary"
	"net/netip"

	"github.com/korium/korium-tun/pki"
)

// srcBuckets is the size of each per-source budget table
// (ratelimit.Keyed). A flood from one source empties one bucket; it empties
// a real peer's only if the two hash to the same bucket (1 in 2048,
// unpredictable: the seed is random per table). The tables are the read
// path's, so they need no lock.
const srcBuckets = 2048

const srcKeySize = 16 + 2 + 16 + pki.IdentitySize

// appendSrcKey encodes a source for the per-source budgets: its address,
// the relay session a frame came in (nil when direct), and the identity it
// claims (nil when none).
func appendSrcKey(b []byte, addr netip.AddrPort, session *[16]byte, id *pki.Identity) []byte {
	a := addr.Addr().As16()
	b = append(b, a[:]...)
	b = binary.BigEndian.AppendUint16(b, addr.Port())
	var zs [16]byte
	if session == nil {
		session = &zs
	}
	b = append(b, session[:]...)
	var zid pki.Identity
	if id == nil {
		id = &zid
	}
	return append(b, id[:]...)
}
