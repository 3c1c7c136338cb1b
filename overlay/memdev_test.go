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
