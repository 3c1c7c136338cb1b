package overlay

import (
	"sync/atomic"

	"github.com/korium/korium-tun/internal/memdev"
)

// memDevice is the in-memory test device: tests inject packets "from local
// programs" with send and read what the node delivered from Got.
type memDevice = memdev.Device

func newMemDevice() *memDevice { return memdev.New() }

// failingDevice is a memDevice whose reads fail with the errors queued in
// errs (one per read) before they work again; reads counts Read calls.
type failingDevice struct {
	*memDevice
	errs  chan error
	reads atomic.Int64
}

func newFailingDevice() *failingDevice {
	d := &failingDevice{memDevice: newMemDevice(), errs: make(chan error, 64)}
	d.memDevice.Errs = d.errs // a Read already waiting sees a queued error too
	return d
}

func (d *failingDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.reads.Add(1)
	return d.memDevice.Read(bufs, sizes, offset)
}
