package overlay

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// memDevice is a tun.Device for tests: tests inject packets "from local
// programs" with send and read what the node delivered from got.
type memDevice struct {
	in     chan []byte
	got    chan []byte
	closed chan struct{}
	once   sync.Once
	mtu    int
	// countOnly makes Write count packets instead of copying them out (for
	// benchmarks: no allocation in the test device itself).
	countOnly bool
	written   atomic.Int64
}

func newMemDevice() *memDevice {
	return &memDevice{in: make(chan []byte, 1024), got: make(chan []byte, 4096), closed: make(chan struct{}), mtu: DefaultMTU}
}

func (d *memDevice) send(p []byte) { d.in <- append([]byte(nil), p...) }

func (d *memDevice) File() *os.File           { return nil }
func (d *memDevice) MTU() (int, error)        { return d.mtu, nil }
func (d *memDevice) Name() (string, error)    { return "mem", nil }
func (d *memDevice) Events() <-chan tun.Event { return nil }
func (d *memDevice) BatchSize() int           { return 32 }
func (d *memDevice) Close() error             { d.once.Do(func() { close(d.closed) }); return nil }
func (d *memDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case p := <-d.in:
		sizes[0] = copy(bufs[0][offset:], p)
	case <-d.closed:
		return 0, os.ErrClosed
	}
	n := 1
	for n < len(bufs) {
		select {
		case p := <-d.in:
			sizes[n] = copy(bufs[n][offset:], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (d *memDevice) Write(bufs [][]byte, offset int) (int, error) {
	if d.countOnly {
		d.written.Add(int64(len(bufs)))
		return len(bufs), nil
	}
	for _, b := range bufs {
		select {
		case d.got <- append([]byte(nil), b[offset:]...):
		case <-d.closed:
			return 0, os.ErrClosed
		}
	}
	return len(bufs), nil
}

// failingDevice is a memDevice whose reads fail with the errors queued in
// errs (one per read) before they work again; reads counts Read calls.
type failingDevice struct {
	*memDevice
	errs  chan error
	reads atomic.Int64
}

func newFailingDevice() *failingDevice {
	return &failingDevice{memDevice: newMemDevice(), errs: make(chan error, 64)}
}

func (d *failingDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.reads.Add(1)
	select {
	case err := <-d.errs:
		return 0, err
	default:
	}
	return d.memDevice.Read(bufs, sizes, offset)
}
