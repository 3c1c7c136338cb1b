package wire

// korium-tun: tests of ours for the changes marked korium-tun in this
// package (upstream's tests are not part of our copy).

import (
	"bytes"
	"testing"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
)

// FuzzParseDatagramFrame: the parser never reads beyond its input, its
// frame's Data aliases the input (it no longer copies) with no room to
// append into the packet, and a parsed frame serializes back to the bytes
// it was parsed from.
func FuzzParseDatagramFrame(f *testing.F) {
	for _, seed := range [][]byte{
		{0x31, 0x03, 'a', 'b', 'c', 0x00},
		{0x30, 'a', 'b', 'c'},
		{0x31, 0x40, 0x05, 1, 2, 3, 4, 5},
		{0x31, 0x44},
		{0x31, 0x09, 1},
		{0x30},
	} {
		f.Add(seed)
	}
	fp := NewFrameParser(true, false, false)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		typ := FrameType(0x30 | b[0]&1)
		in := b[1:]
		frame, l, err := fp.ParseDatagramFrame(typ, in, protocol.Version1)
		if err != nil {
			return
		}
		if l < 0 || l > len(in) {
			t.Fatalf("consumed %d of %d bytes", l, len(in))
		}
		if len(frame.Data) > 0 && (&frame.Data[0] != &in[l-len(frame.Data)] || cap(frame.Data) != len(frame.Data)) {
			t.Fatal("Data does not alias the end of the parsed bytes")
		}
		out, err := frame.Append(nil, protocol.Version1)
		if err != nil {
			t.Fatal(err)
		}
		// a varint length may have been encoded longer than needed
		if frame.DataLenPresent && protocol.ByteCount(len(out)) != frame.Length(protocol.Version1) {
			t.Fatalf("Append wrote %d bytes, Length says %d", len(out), frame.Length(protocol.Version1))
		}
		if !bytes.Equal(out[len(out)-len(frame.Data):], in[l-len(frame.Data):l]) || out[0] != byte(typ) {
			t.Fatal("the frame does not serialize back")
		}
	})
}

// TestDatagramFramePool: frames from the pool come back with empty Data of
// the full capacity; a frame whose Data was replaced is not pooled.
func TestDatagramFramePool(t *testing.T) {
	f := GetDatagramFrame()
	if len(f.Data) != 0 || cap(f.Data) != protocol.MaxPacketBufferSize || f.DataLenPresent {
		t.Fatalf("got len %d cap %d", len(f.Data), cap(f.Data))
	}
	f.Data = append(f.Data, 1, 2, 3)
	f.DataLenPresent = true
	f.PutBack()
	g := GetDatagramFrame()
	if len(g.Data) != 0 || g.DataLenPresent {
		t.Fatal("a pooled frame kept its contents")
	}
	g.Data = make([]byte, 10)
	g.PutBack() // must not panic, and must not pool a short buffer
	(&DatagramFrame{}).PutBack()
	if a := testing.AllocsPerRun(100, func() { GetDatagramFrame().PutBack() }); a != 0 {
		t.Fatalf("%.1f allocations per Get/PutBack", a)
	}
}
