//go:build linux && (amd64 || arm64)

package udpbatch

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadBatchTruncates: a datagram longer than its buffer fills it and
// is marked truncated, as with recvmsg.
func TestReadBatchTruncates(t *testing.T) {
	rc := listen(t, "udp4", "127.0.0.1:0")
	s := listen(t, "udp4", "127.0.0.1:0")
	r, err := New(rc)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), 100)
	if _, err := s.WriteToUDPAddrPort(payload, rc.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	ms := messages(2, 10)
	rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := r.ReadBatch(ms, 0)
	if err != nil || n != 1 {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	if ms[0].N != 10 || !bytes.Equal(ms[0].Buffers[0], payload[:10]) || ms[0].Flags&unix.MSG_TRUNC == 0 {
		t.Errorf("got N=%d flags=%#x, want 10 bytes marked truncated", ms[0].N, ms[0].Flags)
	}
}

// TestReadBatchDoesNotAllocate: reading from a known source allocates
// nothing per datagram.
func TestReadBatchDoesNotAllocate(t *testing.T) {
	rc := listen(t, "udp4", "127.0.0.1:0")
	s := listen(t, "udp4", "127.0.0.1:0")
	r, err := New(rc)
	if err != nil {
		t.Fatal(err)
	}
	dst := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	payload := make([]byte, 1200)
	ms := messages(8, 1500)
	rc.SetReadDeadline(time.Now().Add(30 * time.Second))
	batch := func() {
		for range 4 {
			if _, err := s.WriteToUDPAddrPort(payload, dst); err != nil {
				t.Fatal(err)
			}
		}
		for got := 0; got < 4; {
			n, err := r.ReadBatch(ms, 0)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	batch() // the source's address is made once
	if a := testing.AllocsPerRun(200, batch); a != 0 {
		t.Fatalf("%.2f allocations per batch of 4, want 0", a)
	}
}
