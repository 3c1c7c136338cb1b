package netstack

import (
	"bytes"
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
)

// maxCoalesced bounds a coalesced packet: gVisor pools buffers up to 64 KiB
// (larger ones would allocate), and the IPv6 payload length is 16 bits.
const maxCoalesced = buffer.MaxChunkSize

// tcpGroup is a run of consecutive TCP segments of one flow from one Write
// batch that the stack will receive as a single segment (GRO). Members are
// linked through coalescer.next, by index into the batch.
type tcpGroup struct {
	first, last int    // batch indices
	hl          int    // IPv6 + TCP header length, equal for all members
	segLen      int    // payload of the first member; later ones may not exceed it
	size        int    // total length of the coalesced packet
	nextSeq     uint32 // sequence number the next member must carry
	closed      bool   // a short segment or PSH ended the run
}

// coalescer groups a Write batch's TCP segments. It is reused across
// batches so that steady state allocates nothing; Stack.writeMu guards it.
type coalescer struct {
	groups []tcpGroup
	next   []int // next[i]: the member after batch index i, or -1
}

func (c *coalescer) reset(n int) {
	c.groups = c.groups[:0]
	if cap(c.next) < n {
		c.next = make([]int, n)
	}
	c.next = c.next[:n]
}

// add files pkt (batch index i, an IPv6 packet whose checksum was
// verified) into a group: it joins the latest group of its flow if it
// continues it exactly, else it starts a new group. Order within a flow is
// the order of the batch because only the flow's latest group is extended.
func (c *coalescer) add(pkts [][]byte, i int) {
	c.next[i] = -1
	p := pkts[i]
	hl, err := tcp6HeaderLen(p)
	if err != nil {
		// Not a TCP header gVisor would accept: it goes alone, whole (as
		// its "headers"), for the stack to count and drop.
		c.groups = append(c.groups, tcpGroup{first: i, last: i, hl: len(p), size: len(p), closed: true})
		return
	}
	for g := len(c.groups) - 1; g >= 0; g-- {
		grp := &c.groups[g]
		head := pkts[grp.first]
		if !sameFlow(head, p) {
			continue
		}
		if c.extend(grp, head, p, hl) {
			c.next[grp.last] = i
			grp.last = i
			return
		}
		break
	}
	c.groups = append(c.groups, startGroup(p, i, hl))
}

// sameFlow reports whether two IPv6+TCP packets have the same addresses
// and ports.
func sameFlow(a, b []byte) bool {
	if len(a) < ipv6HeaderLen+4 || a[ipv6NextHeader] != b[ipv6NextHeader] {
		return false
	}
	return bytes.Equal(a[ipv6SrcAddr:ipv6HeaderLen+4], b[ipv6SrcAddr:ipv6HeaderLen+4])
}

// Only ACK and PSH may be set on segments we coalesce; anything else (SYN,
// FIN, RST, URG, ECE, CWR) goes to the stack on its own.
const (
	tcpFlagAck      = 0x10
	coalescibleMask = tcpFlagAck | tcpFlagPsh
)

func startGroup(p []byte, i, hl int) tcpGroup {
	g := tcpGroup{first: i, last: i, hl: hl, segLen: len(p) - hl, size: len(p)}
	flags := p[ipv6HeaderLen+tcpFlags]
	if g.segLen == 0 || flags&^coalescibleMask != 0 || flags&tcpFlagAck == 0 || flags&tcpFlagPsh != 0 {
		g.closed = true
		return g
	}
	g.nextSeq = binary.BigEndian.Uint32(p[ipv6HeaderLen+tcpSeq:]) + uint32(g.segLen)
	return g
}

// extend appends p to grp if p is the flow's next segment with identical
// headers (apart from length, sequence number, PSH, window and checksum)
// and the result stays within bounds.
func (c *coalescer) extend(grp *tcpGroup, head, p []byte, hl int) bool {
	payload := len(p) - hl
	if grp.closed || hl != grp.hl || payload == 0 || payload > grp.segLen || grp.size+payload > maxCoalesced {
		return false
	}
	tcpH, tcpP := head[ipv6HeaderLen:hl], p[ipv6HeaderLen:hl]
	flags := tcpP[tcpFlags]
	if flags&^coalescibleMask != 0 || flags&tcpFlagAck == 0 ||
		binary.BigEndian.Uint32(tcpP[tcpSeq:]) != grp.nextSeq ||
		!bytes.Equal(head[:ipv6PayloadLen], p[:ipv6PayloadLen]) || // version, class, flow label
		!bytes.Equal(head[ipv6NextHeader:ipv6SrcAddr], p[ipv6NextHeader:ipv6SrcAddr]) || // next header, hop limit
		!bytes.Equal(tcpH[8:tcpFlags], tcpP[8:tcpFlags]) || // ack, data offset
		!bytes.Equal(tcpH[tcpMinHeaderLen:], tcpP[tcpMinHeaderLen:]) { // options (timestamps)
		return false
	}
	grp.size += payload
	grp.nextSeq += uint32(payload)
	grp.closed = payload < grp.segLen || flags&tcpFlagPsh != 0
	return true
}

// build returns the group as one packet: the head's headers with the total
// length, the last member's window and PSH, and every member's payload. The
// TCP checksum is left stale; the stack is told checksums were verified,
// which Write did for each member.
//
// The headers get a small view of their own and the payload a view of its
// own. gVisor's IPv6 layer clones every inbound packet (sharing its
// chunks) before it reads the headers, and reading a header from a shared
// chunk copies the whole chunk first (buffer.PullUp's copy-on-write): with
// headers and payload in one 64 KiB chunk that copied, and on a pool miss
// zeroed, 64 KiB per packet. The payload is never pulled up, so apart the
// copy costs hl bytes.
func (c *coalescer) build(pkts [][]byte, grp *tcpGroup) buffer.Buffer {
	head := pkts[grp.first]
	hdr := buffer.NewViewWithData(head[:grp.hl])
	if grp.first != grp.last {
		last := pkts[grp.last]
		h := hdr.AsSlice()
		binary.BigEndian.PutUint16(h[ipv6PayloadLen:], uint16(grp.size-ipv6HeaderLen))
		h[ipv6HeaderLen+tcpFlags] |= last[ipv6HeaderLen+tcpFlags] & tcpFlagPsh
		copy(h[ipv6HeaderLen+14:ipv6HeaderLen+16], last[ipv6HeaderLen+14:]) // window
	}
	buf := buffer.MakeWithView(hdr)
	if grp.size == grp.hl {
		return buf
	}
	data := buffer.NewView(grp.size - grp.hl)
	data.Write(head[grp.hl:])
	for i := c.next[grp.first]; i >= 0; i = c.next[i] {
		data.Write(pkts[i][grp.hl:])
	}
	// Merge, unlike Append, keeps the views apart.
	payload := buffer.MakeWithView(data)
	buf.Merge(&payload)
	return buf
}
