package rpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
)

func TestRequestFrames(t *testing.T) {
	big := bytes.Repeat([]byte{7}, MaxMessageSize)
	tests := []struct {
		name    string
		in      []byte
		proto   byte
		payload []byte
		err     error
	}{
		{"echo", AppendRequest(nil, ProtoApp, []byte("hi")), ProtoApp, []byte("hi"), nil},
		{"empty payload", AppendRequest(nil, ProtoDHT, nil), ProtoDHT, []byte{}, nil},
		{"1 MiB", AppendRequest(nil, ProtoGossip, big), ProtoGossip, big, nil},
		{"1 MiB + 1 prefix", binary.AppendUvarint([]byte{ProtoApp}, MaxMessageSize+1), ProtoApp, nil, errFrameTooLarge},
		{"huge prefix", binary.AppendUvarint([]byte{ProtoApp}, 1<<62), ProtoApp, nil, errFrameTooLarge},
		{"unknown proto 0", []byte{0, 1, 'x'}, 0, nil, errUnknownProto},
		{"unknown proto 6", []byte{6, 1, 'x'}, 6, nil, errUnknownProto},
		{"empty", nil, 0, nil, io.EOF},
		{"no length", []byte{ProtoApp}, ProtoApp, nil, io.EOF},
		{"truncated length", []byte{ProtoApp, 0x80}, ProtoApp, nil, io.ErrUnexpectedEOF},
		{"truncated payload", []byte{ProtoApp, 5, 'a', 'b'}, ProtoApp, nil, io.ErrUnexpectedEOF},
		{"overlong varint", append([]byte{ProtoApp}, bytes.Repeat([]byte{0xff}, 11)...), ProtoApp, nil, errBadVarint},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proto, payload, err := ReadRequest(bytes.NewReader(tt.in), MaxMessageSize)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if proto != tt.proto || !bytes.Equal(payload, tt.payload) {
				t.Fatalf("got proto %d payload %d bytes, want %d, %d bytes", proto, len(payload), tt.proto, len(tt.payload))
			}
		})
	}
}

func TestResponseFrames(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		st      Status
		payload []byte
		err     error
	}{
		{"ok", AppendResponse(nil, StatusOK, []byte("x")), StatusOK, []byte("x"), nil},
		{"error text", AppendResponse(nil, StatusHandlerError, []byte("boom")), StatusHandlerError, []byte("boom"), nil},
		{"error text too long", AppendResponse(nil, StatusRefused, make([]byte, MaxErrorText+1)), StatusRefused, nil, errFrameTooLarge},
		{"bad status", []byte{9, 0}, 9, nil, errBadStatus},
		{"ok too large", binary.AppendUvarint([]byte{0}, MaxMessageSize+1), StatusOK, nil, errFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, payload, err := ReadResponse(bytes.NewReader(tt.in), MaxMessageSize)
			if !errors.Is(err, tt.err) || st != tt.st || !bytes.Equal(payload, tt.payload) {
				t.Fatalf("got %v %q %v, want %v %q %v", st, payload, err, tt.st, tt.payload, tt.err)
			}
		})
	}
}

// countingReader counts bytes taken from the underlying reader, to show
// that a too-large frame is refused after its prefix alone.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// A full payload is held in a buffer of its own size, allocated about once
// over (64 KiB doubling up to it), not in a 2 MiB buffer grown past it.
func TestPayloadBufferFitsThePayload(t *testing.T) {
	in := AppendRequest(nil, ProtoApp, make([]byte, MaxMessageSize))
	_, p, err := ReadRequest(bytes.NewReader(in), MaxMessageSize)
	if err != nil || len(p) != MaxMessageSize {
		t.Fatalf("len %d, %v", len(p), err)
	}
	if cap(p) != MaxMessageSize {
		t.Fatalf("1 MiB payload kept in a buffer of %d bytes", cap(p))
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ReadRequest(bytes.NewReader(in), MaxMessageSize)
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 2*MaxMessageSize+64<<10 {
		t.Fatalf("reading a 1 MiB payload allocated %d bytes", d)
	}
}

func TestTooLargeReadsOnlyThePrefix(t *testing.T) {
	in := AppendRequest(nil, ProtoApp, make([]byte, MaxMessageSize+1))
	cr := &countingReader{r: bytes.NewReader(in)}
	_, _, err := ReadRequest(cr, MaxMessageSize)
	if !errors.Is(err, errFrameTooLarge) {
		t.Fatal(err)
	}
	if want := 1 + len(binary.AppendUvarint(nil, MaxMessageSize+1)); cr.n != want {
		t.Fatalf("read %d bytes, want only the %d-byte header", cr.n, want)
	}
	// And it allocates a few bytes, not the announced megabyte.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < 10; i++ {
		ReadRequest(bytes.NewReader(in[:8]), MaxMessageSize)
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
		t.Fatalf("refusing 10 too-large frames allocated %d bytes", d)
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add(AppendRequest(nil, ProtoApp, []byte("hello")))
	f.Add(AppendRequest(nil, ProtoDHT, nil))
	f.Add([]byte{ProtoRelay, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Add(binary.AppendUvarint([]byte{ProtoGossip}, MaxMessageSize+1))
	f.Add([]byte{0, 0})
	f.Add([]byte{ProtoApp, 3, 'a'})
	f.Fuzz(func(t *testing.T, in []byte) {
		const limit = 4096
		proto, payload, err := ReadRequest(bytes.NewReader(in), limit)
		if err != nil {
			return
		}
		if !KnownProto(proto) || len(payload) > limit {
			t.Fatalf("accepted proto %d with %d bytes", proto, len(payload))
		}
		// What was accepted re-encodes to the bytes it came from.
		if out := AppendRequest(nil, proto, payload); !bytes.HasPrefix(in, out) {
			t.Fatalf("re-encoding %x is not a prefix of %x", out, in)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	f.Add(AppendResponse(nil, StatusOK, []byte("hello")))
	f.Add(AppendResponse(nil, StatusHandlerError, []byte("boom")))
	f.Add(AppendResponse(nil, StatusTimeout, nil))
	f.Add(binary.AppendUvarint([]byte{byte(StatusOK)}, MaxMessageSize+1))
	f.Add([]byte{byte(StatusRefused), 0xff, 0x01})
	f.Add([]byte{200, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		const limit = 4096
		st, payload, err := ReadResponse(bytes.NewReader(in), limit)
		if err != nil {
			return
		}
		if !st.valid() || len(payload) > limit || (st != StatusOK && len(payload) > MaxErrorText) {
			t.Fatalf("accepted status %v with %d bytes", st, len(payload))
		}
		if out := AppendResponse(nil, st, payload); !bytes.HasPrefix(in, out) {
			t.Fatalf("re-encoding %x is not a prefix of %x", out, in)
		}
	})
}
