package wire

// korium-tun: this file is ours, not upstream's. DATAGRAM frames for
// sending come from a pool, like STREAM frames (pool.go), so that
// Conn.SendDatagram allocates nothing per datagram. See third_party/README.md.

import (
	"sync"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
)

var datagramPool = sync.Pool{New: func() any {
	return &DatagramFrame{Data: make([]byte, 0, protocol.MaxPacketBufferSize), fromPool: true}
}}

// GetDatagramFrame returns a DATAGRAM frame with empty Data that has room
// for protocol.MaxPacketBufferSize bytes. Give it back with PutBack once it
// has been serialized.
func GetDatagramFrame() *DatagramFrame {
	f := datagramPool.Get().(*DatagramFrame)
	f.DataLenPresent = false
	f.Data = f.Data[:0]
	return f
}

// PutBack returns a frame from GetDatagramFrame to the pool; the caller
// must not use it afterwards. Other frames, and frames whose Data was
// replaced by a different buffer, are left to the garbage collector.
func (f *DatagramFrame) PutBack() {
	if !f.fromPool || cap(f.Data) != protocol.MaxPacketBufferSize {
		return
	}
	datagramPool.Put(f)
}
