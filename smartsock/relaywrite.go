package smartsock

import "github.com/korium/korium-tun/wire"

// relayBufSize holds the largest GSO batch quic-go writes (64 KiB) plus a
// CRLY header per segment.
const relayBufSize = 64<<10 + 64*wire.RelayHeaderSize

// maxOOB bounds the control messages we copy to patch the GSO segment size.
const maxOOB = 128

// writeRelay sends b to a relay in CRLY frames. A GSO batch stays a GSO
// batch: every segment gets its header and the segment size in oob grows by
// the header size, so the relay receives one frame per QUIC packet.
func (c *Conn) writeRelay(d dest, b, oob []byte) error {
	seg := gsoSize(oob)
	if seg <= 0 || seg >= len(b) {
		seg = len(b)
	}
	bp := c.relayBuf.Get().(*[]byte)
	out := (*bp)[:0]
	for off := 0; off < len(b); off += seg {
		end := min(off+seg, len(b))
		if len(out)+wire.RelayHeaderSize+end-off > cap(out) {
			break // cannot happen with quic-go's batches; drop the rest like loss
		}
		out = wire.AppendRelayHeader(out, wire.RelayHeader{Session: d.session})
		out = append(out, b[off:end]...)
	}
	var ob [maxOOB]byte
	o := oob
	if len(oob) > 0 && len(oob) <= maxOOB {
		o = ob[:copy(ob[:], oob)]
		setGSOSize(o, seg+wire.RelayHeaderSize)
	} else if len(oob) > maxOOB {
		o = nil
	}
	err := c.udp.WriteTo(out, o, d.addr)
	*bp = out[:0]
	c.relayBuf.Put(bp)
	c.stats.TxRelayed.Add(1)
	return err
}
