package netstack

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// tcp6Packet builds an IPv6+TCP packet with payload and a valid checksum.
func tcp6Packet(seq uint32, flags byte, optLen int, payload []byte) []byte {
	thl := tcpMinHeaderLen + optLen
	p := make([]byte, ipv6HeaderLen+thl+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[ipv6PayloadLen:], uint16(thl+len(payload)))
	p[ipv6NextHeader] = tcpProto
	p[7] = 64
	src, dst := testAddr(1).As16(), testAddr(2).As16()
	copy(p[8:24], src[:])
	copy(p[24:40], dst[:])
	tcp := p[ipv6HeaderLen:]
	binary.BigEndian.PutUint16(tcp[0:], 1234)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	binary.BigEndian.PutUint32(tcp[tcpSeq:], seq)
	tcp[tcpDataOff] = byte(thl/4) << 4
	tcp[tcpFlags] = flags
	for i := range optLen {
		tcp[tcpMinHeaderLen+i] = 1 // NOP options
	}
	copy(tcp[thl:], payload)
	setTCP6Checksum(p)
	return p
}

func TestSplitTCP6(t *testing.T) {
	const ack = 0x10
	for _, tc := range []struct {
		name              string
		payload, mss, opt int
		flags             byte
		wantSegs          int
	}{
		{"empty", 0, 1200, 0, ack, 1},
		{"one byte", 1, 1200, 0, ack, 1},
		{"exactly mss", 1200, 1200, 12, ack | tcpFlagPsh, 1},
		{"mss plus one", 1201, 1200, 12, ack | tcpFlagPsh | tcpFlagFin, 2},
		{"32 KiB", 32 << 10, 1208, 12, ack | tcpFlagPsh | tcpFlagCwr, 28},
		{"odd sizes", 9999, 777, 0, ack | tcpFlagPsh, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := make([]byte, tc.payload)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			const seq = 0xfffff000 // wraps within the larger cases
			p := tcp6Packet(seq, tc.flags, tc.opt, payload)
			hl, err := tcp6HeaderLen(p)
			if err != nil || hl != ipv6HeaderLen+tcpMinHeaderLen+tc.opt {
				t.Fatalf("tcp6HeaderLen = %d, %v", hl, err)
			}
			if n := tcp6Segments(len(p), hl, tc.mss); n != tc.wantSegs {
				t.Fatalf("tcp6Segments = %d, want %d", n, tc.wantSegs)
			}
			const off = 10
			bufs := make([][]byte, tc.wantSegs)
			for i := range bufs {
				bufs[i] = make([]byte, off+hl+tc.mss)
			}
			sizes := make([]int, len(bufs))
			n, err := splitTCP6(p, hl, tc.mss, bufs, sizes, off)
			if err != nil || n != tc.wantSegs {
				t.Fatalf("splitTCP6 = %d, %v", n, err)
			}
			var joined []byte
			for i := range n {
				seg := bufs[i][off : off+sizes[i]]
				if ok, checked := verifyTransportChecksum(seg); !ok || !checked {
					t.Errorf("segment %d: bad checksum", i)
				}
				if got := binary.BigEndian.Uint32(seg[ipv6HeaderLen+tcpSeq:]); got != seq+uint32(len(joined)) {
					t.Errorf("segment %d: seq %#x", i, got)
				}
				f := seg[ipv6HeaderLen+tcpFlags]
				last := i == n-1
				if (f&tcpFlagFin != 0) != (last && tc.flags&tcpFlagFin != 0) ||
					(f&tcpFlagPsh != 0) != (last && tc.flags&tcpFlagPsh != 0) ||
					(f&tcpFlagCwr != 0) != (i == 0 && tc.flags&tcpFlagCwr != 0) {
					t.Errorf("segment %d: flags %#x from %#x", i, f, tc.flags)
				}
				if !bytes.Equal(seg[:ipv6PayloadLen], p[:ipv6PayloadLen]) || !bytes.Equal(seg[ipv6NextHeader:ipv6HeaderLen], p[ipv6NextHeader:ipv6HeaderLen]) {
					t.Errorf("segment %d: IPv6 header changed", i)
				}
				if len(seg)-hl > tc.mss {
					t.Errorf("segment %d: %d payload bytes > mss", i, len(seg)-hl)
				}
				joined = append(joined, seg[hl:]...)
			}
			if !bytes.Equal(joined, payload) {
				t.Error("payload differs after split")
			}
			// The same packet held in uneven pieces, as gVisor's views
			// hold it, splits into the same segments.
			var pieces [][]byte
			for rest, k := payload, 0; len(rest) > 0; k++ {
				c := min(len(rest), []int{1, 0, 777, 3000, 13}[k%5])
				pieces = append(pieces, rest[:c])
				rest = rest[c:]
			}
			bufs2 := make([][]byte, len(bufs))
			for i := range bufs2 {
				bufs2[i] = make([]byte, len(bufs[i]))
			}
			sizes2 := make([]int, len(bufs))
			n2, err := splitTCP6Pieces(p[:hl], pieces, len(payload), tc.mss, bufs2, sizes2, off)
			if err != nil || n2 != n {
				t.Fatalf("splitTCP6Pieces = %d, %v", n2, err)
			}
			for i := range n {
				if !bytes.Equal(bufs[i][off:off+sizes[i]], bufs2[i][off:off+sizes2[i]]) {
					t.Errorf("segment %d differs when split from pieces", i)
				}
			}
			if len(payload) > 0 {
				if _, err := splitTCP6Pieces(p[:hl], pieces[:len(pieces)-1], len(payload), tc.mss, bufs2, sizes2, off); err == nil {
					t.Error("split of pieces shorter than their length succeeded")
				}
			}
		})
	}
}

// TestGSOMaxSizeFor checks that super-packets split into full segments
// only and stay within the IPv6 payload length and one coalesced packet.
func TestGSOMaxSizeFor(t *testing.T) {
	for mtu := minMTU; mtu <= maxMTU; mtu += 1 + mtu/7 {
		g := int(gsoMaxSizeFor(mtu))
		mss := mtu - ipv6HeaderLen - tcpMinHeaderLen - tcpTimestampLen
		payload := g - gvisorTCPHeaderSlack
		if payload%mss != 0 || payload < mss || g > gsoMaxSize || ipv6HeaderLen+tcpMinHeaderLen+tcpTimestampLen+payload > maxCoalesced {
			t.Errorf("MTU %d: GSO max %d, payload %d for MSS %d", mtu, g, payload, mss)
		}
		if mss*(payload/mss+1)+gvisorTCPHeaderSlack <= gsoMaxSize {
			t.Errorf("MTU %d: GSO max %d leaves room for another segment", mtu, g)
		}
	}
}

func TestVerifyTransportChecksum(t *testing.T) {
	p := tcp6Packet(1, 0x10, 0, []byte("hello"))
	if ok, checked := verifyTransportChecksum(p); !ok || !checked {
		t.Fatal("valid packet rejected")
	}
	p[len(p)-1] ^= 1
	if ok, _ := verifyTransportChecksum(p); ok {
		t.Fatal("corrupted packet accepted")
	}
	if _, err := tcp6HeaderLen(p[:len(p)-1]); err == nil {
		t.Fatal("truncated packet has a header length")
	}
	p[ipv6NextHeader] = 44 // fragment header: not checked
	if _, checked := verifyTransportChecksum(p); checked {
		t.Fatal("fragment checked")
	}
}
