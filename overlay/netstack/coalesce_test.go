package netstack

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// seg builds a segment of flow sport with seq, flags and n payload bytes.
func seg(sport uint16, seq uint32, flags byte, n int) []byte {
	p := tcp6Packet(seq, flags, 12, bytes.Repeat([]byte{byte(seq)}, n))
	binary.BigEndian.PutUint16(p[ipv6HeaderLen:], sport)
	setTCP6Checksum(p)
	return p
}

// badOffset returns p with a TCP data offset below the minimum header.
func badOffset(p []byte) []byte {
	p[ipv6HeaderLen+tcpDataOff] = 4 << 4
	return p
}

func TestCoalescer(t *testing.T) {
	const ack, psh, fin = tcpFlagAck, tcpFlagAck | tcpFlagPsh, tcpFlagAck | tcpFlagFin
	for _, tc := range []struct {
		name string
		pkts [][]byte
		want [][]int // batch indices per group, in delivery order
	}{
		{"one flow", [][]byte{seg(1, 0, ack, 100), seg(1, 100, ack, 100), seg(1, 200, psh, 100)}, [][]int{{0, 1, 2}}},
		{"short segment ends run", [][]byte{seg(1, 0, ack, 100), seg(1, 100, ack, 50), seg(1, 150, ack, 100)}, [][]int{{0, 1}, {2}}},
		{"larger segment starts anew", [][]byte{seg(1, 0, ack, 50), seg(1, 50, ack, 100)}, [][]int{{0}, {1}}},
		{"PSH ends run", [][]byte{seg(1, 0, psh, 100), seg(1, 100, ack, 100)}, [][]int{{0}, {1}}},
		{"gap", [][]byte{seg(1, 0, ack, 100), seg(1, 150, ack, 100)}, [][]int{{0}, {1}}},
		{"FIN alone, after data", [][]byte{seg(1, 0, ack, 100), seg(1, 100, fin, 100)}, [][]int{{0}, {1}}},
		{"pure ACKs", [][]byte{seg(1, 0, ack, 0), seg(1, 0, ack, 0)}, [][]int{{0}, {1}}},
		{"interleaved flows", [][]byte{seg(1, 0, ack, 100), seg(2, 0, ack, 100), seg(1, 100, ack, 100), seg(2, 100, ack, 100)}, [][]int{{0, 2}, {1, 3}}},
		{"flow order kept", [][]byte{seg(1, 0, ack, 100), seg(2, 0, ack, 100), seg(1, 500, ack, 100), seg(1, 600, ack, 100)}, [][]int{{0}, {1}, {2, 3}}},
		{"bad header goes alone, whole", [][]byte{seg(1, 0, ack, 100), badOffset(seg(1, 100, ack, 100)), seg(1, 200, ack, 100)}, [][]int{{0}, {1}, {2}}},
		{"size cap", [][]byte{seg(1, 0, ack, 30000), seg(1, 30000, ack, 30000), seg(1, 60000, ack, 30000)}, [][]int{{0, 1}, {2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c coalescer
			c.reset(len(tc.pkts))
			for i := range tc.pkts {
				c.add(tc.pkts, i)
			}
			var got [][]int
			for _, g := range c.groups {
				var m []int
				for i := g.first; i >= 0; i = c.next[i] {
					m = append(m, i)
				}
				got = append(got, m)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("groups %v, want %v", got, tc.want)
			}
			for g := range got {
				if !slices.Equal(got[g], tc.want[g]) {
					t.Fatalf("groups %v, want %v", got, tc.want)
				}
				grp := &c.groups[g]
				v := c.build(tc.pkts, grp)
				if vl := v.AsViewList(); vl.Front().Size() != grp.hl || v.Size() > int64(grp.hl) && vl.Len() != 2 {
					t.Fatalf("group %d: headers are not a view of their own", g)
				}
				b := v.Flatten()
				var payload []byte
				for _, i := range got[g] {
					payload = append(payload, tc.pkts[i][grp.hl:]...)
				}
				if len(b) != grp.size || int(binary.BigEndian.Uint16(b[ipv6PayloadLen:]))+ipv6HeaderLen != len(b) ||
					!bytes.Equal(b[grp.hl:], payload) {
					t.Fatalf("group %d: built %d bytes, header length %d", g, len(b), binary.BigEndian.Uint16(b[ipv6PayloadLen:]))
				}
				last := tc.pkts[got[g][len(got[g])-1]]
				if b[ipv6HeaderLen+tcpFlags]&tcpFlagPsh != last[ipv6HeaderLen+tcpFlags]&tcpFlagPsh {
					t.Fatalf("group %d: PSH not taken from the last member", g)
				}
				v.Release()
			}
		})
	}
}
