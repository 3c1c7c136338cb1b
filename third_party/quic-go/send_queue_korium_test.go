package quic

// korium-tun: tests of ours for the send queue whose writer runs only
// while it has packets (upstream's tests are not part of our copy).

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
)

// recordingConn is a sendConn that records what is written to it, can be
// made to block, and fails the write numbered failAt (from 1).
type recordingConn struct {
	mu      sync.Mutex
	written []byte // the first byte of every packet, in order
	gate    chan struct{}
	failAt  int
	writes  int
}

func (c *recordingConn) Write(b []byte, _ uint16, _ protocol.ECN) error {
	if c.gate != nil {
		<-c.gate
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	if c.writes == c.failAt {
		return errors.New("write failed")
	}
	c.written = append(c.written, b[0])
	return nil
}

func (c *recordingConn) got() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.written...)
}

func (c *recordingConn) WriteTo([]byte, net.Addr, packetInfo) error { return nil }
func (c *recordingConn) Close() error                               { return nil }
func (c *recordingConn) LocalAddr() net.Addr                        { return &net.UDPAddr{} }
func (c *recordingConn) RemoteAddr() net.Addr                       { return &net.UDPAddr{} }
func (c *recordingConn) ChangeRemoteAddr(net.Addr, packetInfo)      {}
func (c *recordingConn) capabilities() connCapabilities             { return connCapabilities{} }

func packetWith(b byte) *packetBuffer {
	p := getPacketBuffer()
	p.Data = append(p.Data, b)
	return p
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func (h *sendQueue) isRunning() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running
}

// TestSendQueueWriterOnDemand: packets are written in order across many
// bursts, the writer is gone whenever the queue is empty, and a full queue
// reports WouldBlock and signals Available as it drains.
func TestSendQueueWriterOnDemand(t *testing.T) {
	conn := &recordingConn{}
	h := newSendQueue(conn, func(err error) { t.Errorf("onErr: %v", err) }).(*sendQueue)
	var want []byte
	for burst := range 200 {
		for i := range 1 + burst%sendQueueCapacity {
			b := byte(burst*7 + i)
			want = append(want, b)
			for h.WouldBlock() { // as the run loop, which waits for Available
				<-h.Available()
			}
			h.Send(packetWith(b), 0, protocol.ECNNon)
		}
		if burst%10 == 0 {
			waitFor(t, "the writer to stop", func() bool { return !h.isRunning() })
		}
	}
	waitFor(t, "every packet", func() bool { return len(conn.got()) == len(want) })
	if string(conn.got()) != string(want) {
		t.Fatal("packets written out of order")
	}
	waitFor(t, "the writer to stop", func() bool { return !h.isRunning() })

	// A blocked write: the queue fills, WouldBlock, then Available.
	conn.gate = make(chan struct{})
	h.Send(packetWith(1), 0, protocol.ECNNon) // the writer takes it and blocks
	waitFor(t, "the writer to take the first packet", func() bool { return len(h.queue) == 0 })
	for i := range sendQueueCapacity {
		if h.WouldBlock() {
			t.Fatalf("WouldBlock with %d queued", i)
		}
		h.Send(packetWith(2), 0, protocol.ECNNon)
	}
	if !h.WouldBlock() {
		t.Fatal("a full queue does not report WouldBlock")
	}
	close(conn.gate)
	select {
	case <-h.Available():
	case <-time.After(10 * time.Second):
		t.Fatal("Available was not signalled")
	}
	h.Close()
	if n := len(conn.got()); n != len(want)+1+sendQueueCapacity {
		t.Fatalf("Close returned with %d of %d packets written", n, len(want)+1+sendQueueCapacity)
	}
	h.Send(packetWith(3), 0, protocol.ECNNon)
	if len(h.queue) != 0 || h.isRunning() {
		t.Fatal("a packet sent after Close was queued for writing")
	}
}

// TestSendQueueWriteError: a failed write reports the error once, stops
// the writer for good, and Close returns.
func TestSendQueueWriteError(t *testing.T) {
	conn := &recordingConn{failAt: 3}
	errs := make(chan error, 4)
	h := newSendQueue(conn, func(err error) { errs <- err }).(*sendQueue)
	for i := range 5 {
		h.Send(packetWith(byte(i)), 0, protocol.ECNNon)
	}
	select {
	case <-errs:
	case <-time.After(10 * time.Second):
		t.Fatal("the write error was not reported")
	}
	h.Close()
	h.Send(packetWith(9), 0, protocol.ECNNon)
	if len(errs) != 0 {
		t.Fatal("the error was reported more than once")
	}
	if got := conn.got(); len(got) != 2 {
		t.Fatalf("%d packets written around a failed third write, want 2", len(got))
	}
}

// TestSendQueueIdleHasNoGoroutine: a thousand idle queues that each sent a
// packet leave no goroutine behind.
func TestSendQueueIdleHasNoGoroutine(t *testing.T) {
	g0 := runtime.NumGoroutine()
	qs := make([]*sendQueue, 1000)
	for i := range qs {
		qs[i] = newSendQueue(&recordingConn{}, func(error) {}).(*sendQueue)
		qs[i].Send(packetWith(1), 0, protocol.ECNNon)
	}
	waitFor(t, "the writers to stop", func() bool { return runtime.NumGoroutine() <= g0+5 })
	for _, h := range qs {
		h.Close()
	}
}
