// Package memdev is an in-memory tun.Device and an IPv6 packet builder for
// tests of the packet path (datapath, overlay): tests inject packets "from
// local programs" with Send and read what was delivered from Got.
package memdev

import (
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// Device is a tun.Device in memory. Reads take the packets queued on In;
// writes queue copies on Got, or with CountOnly only count them (Written).
type Device struct {
	In        chan []byte
	Got       chan []byte
	CountOnly atomic.Bool // count writes instead of copying them out (benchmarks)
	Written   atomic.Int64
	// MTUValue is what MTU reports (default 1392).
	MTUValue int

	closed chan struct{}
	once   sync.Once
}

// New returns a device with room for 1,024 packets in and 4,096 out.
func New() *Device {
	return &Device{In: make(chan []byte, 1024), Got: make(chan []byte, 4096), closed: make(chan struct{}), MTUValue: 1392}
}

// Send queues a copy of p for the next Read.
func (d *Device) Send(p []byte) { d.In <- append([]byte(nil), p...) }

func (d *Device) File() *os.File           { return nil }
func (d *Device) MTU() (int, error)        { return d.MTUValue, nil }
func (d *Device) Name() (string, error)    { return "mem", nil }
func (d *Device) Events() <-chan tun.Event { return nil }
func (d *Device) BatchSize() int           { return 32 }
func (d *Device) Close() error             { d.once.Do(func() { close(d.closed) }); return nil }

// Read waits for one packet, then takes whatever else is queued.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case p := <-d.In:
		sizes[0] = copy(bufs[0][offset:], p)
	case <-d.closed:
		return 0, os.ErrClosed
	}
	n := 1
	for n < len(bufs) {
		select {
		case p := <-d.In:
			sizes[n] = copy(bufs[n][offset:], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

// Write queues copies of the packets on Got (or counts them).
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	if d.CountOnly.Load() {
		d.Written.Add(int64(len(bufs)))
		return len(bufs), nil
	}
	for _, b := range bufs {
		select {
		case d.Got <- append([]byte(nil), b[offset:]...):
		case <-d.closed:
			return 0, os.ErrClosed
		}
	}
	return len(bufs), nil
}

// UDP6 builds an IPv6/UDP packet (UDP checksum left zero: the packet path
// does not look past the IPv6 header).
func UDP6(src, dst netip.Addr, payload []byte) []byte {
	b := []byte{0x60, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(payload)))
	b = append(b, 17, 64)
	s, d := src.As16(), dst.As16()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	b = binary.BigEndian.AppendUint16(b, 4000)
	b = binary.BigEndian.AppendUint16(b, 5000)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(payload)))
	b = append(b, 0, 0)
	return append(b, payload...)
}
