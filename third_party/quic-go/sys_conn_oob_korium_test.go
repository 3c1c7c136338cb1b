//go:build linux

package quic

// korium-tun: tests of ours for the changes marked korium-tun in this
// package (upstream's tests are not part of our copy).

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/net/ipv4"
)

// scriptedBatch returns one batch per call from its script: a payload
// (one message) or an error.
type scriptedBatch struct {
	script []any
}

func (s *scriptedBatch) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	step := s.script[0]
	s.script = s.script[1:]
	if err, ok := step.(error); ok {
		return 0, err
	}
	ms[0].N = copy(ms[0].Buffers[0], step.(string))
	ms[0].NN = 0
	ms[0].Addr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4242}
	return 1, nil
}

// TestReadPacketAfterReadError: a failed batch read is followed by a new
// read, not by the previous batch's messages again.
func TestReadPacketAfterReadError(t *testing.T) {
	errTemp := errors.New("temporary")
	fake := &scriptedBatch{script: []any{"first", errTemp, "second"}}
	msgs := make([]ipv4.Message, batchSize)
	for i := range msgs {
		msgs[i].Buffers = make([][]byte, 1)
		msgs[i].OOB = make([]byte, oobBufferSize)
	}
	c := &oobConn{batchConn: fake, messages: msgs, readPos: batchSize}
	p, err := c.ReadPacket()
	if err != nil || string(p.data) != "first" {
		t.Fatalf("got %q, %v", p.data, err)
	}
	if _, err := c.ReadPacket(); !errors.Is(err, errTemp) {
		t.Fatalf("got %v, want the read error", err)
	}
	p, err = c.ReadPacket()
	if err != nil || string(p.data) != "second" {
		t.Fatalf("after the error: got %q, %v; want a fresh read", p.data, err)
	}
}
