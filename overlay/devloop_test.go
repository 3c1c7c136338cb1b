package overlay

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/korium/korium-tun/datapath"
	"github.com/korium/korium-tun/pki"
)

func newNodeOn(t *testing.T, dev *failingDevice) *Node {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, DisableDHT: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// A run of temporary read errors is waited out with a growing backoff (not
// a hot loop), counted, and the loop carries packets again afterwards.
func TestDeviceReadErrorsBackOff(t *testing.T) {
	dev := newFailingDevice()
	for i := 0; i < 5; i++ {
		dev.errs <- errors.New("transient")
	}
	start := time.Now()
	n := newNodeOn(t, dev)
	waitFor(t, "errors read", 10*time.Second, func() bool { return len(dev.errs) == 0 && n.dp.Counters.DevReadErrors.Load() == 5 })
	// A packet to a non-overlay address shows the loop is alive.
	dev.Send(udp6(n.addr, netip.MustParseAddr("2001:db8::1"), []byte("x")))
	waitFor(t, "loop alive", 5*time.Second, func() bool { return n.dp.Counters.TxNotOverlay.Load() == 1 })
	took := time.Since(start)
	// 10+20+40+80+160 ms of backoff, and one read per error, not thousands.
	if took < 300*time.Millisecond || dev.reads.Load() > 10 {
		t.Fatalf("5 errors took %v and %d reads: no backoff", took, dev.reads.Load())
	}
	select {
	case <-n.Done():
		t.Fatalf("the node stopped: %v", n.Err())
	default:
	}
}

// A device that is gone (closed under the node, as the kernel TUN's fd
// after `ip link del`) stops the node with an error naming the device.
func TestDeviceGoneStopsNode(t *testing.T) {
	for _, gone := range []error{os.ErrClosed, &os.PathError{Op: "read", Path: "/dev/net/tun", Err: syscall.ENODEV}} {
		dev := newFailingDevice()
		n := newNodeOn(t, dev)
		dev.errs <- gone
		select {
		case <-n.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%v: the node is still up", gone)
		}
		if err := n.Err(); err == nil || !strings.Contains(err.Error(), "device mem is gone") {
			t.Fatalf("%v: Err() = %v", gone, err)
		}
	}
}

// Reads that keep failing stop the node after a bounded number of tries.
func TestDeviceKeepsFailingStopsNode(t *testing.T) {
	dev := newFailingDevice()
	for i := 0; i <= datapath.MaxDeviceErrors; i++ {
		dev.errs <- syscall.EIO
	}
	n := newNodeOn(t, dev)
	select {
	case <-n.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the node is still up")
	}
	if err := n.Err(); err == nil || !strings.Contains(err.Error(), "device mem: 11 reads in a row failed") {
		t.Fatalf("Err() = %v", err)
	}
	// A plain Close afterwards is harmless, and a node closed by its owner
	// reports no failure.
	n.Close()
	m := newNodeOn(t, newFailingDevice())
	m.Close()
	<-m.Done()
	if m.Err() != nil {
		t.Fatalf("closed node: Err() = %v", m.Err())
	}
}
