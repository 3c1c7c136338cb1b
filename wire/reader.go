package wire

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Errors of Reader.
var (
	// ErrTruncated: the message ends before its format says it does.
	ErrTruncated = errors.New("wire: message truncated")
	// ErrTooMany: a count is above its limit.
	ErrTooMany = errors.New("wire: count above its limit")
)

// Reader is a bounds-checked cursor over one message. The first error
// sticks: every later read returns zero values and the error stays in Err,
// so a decoder reads its fields in a row and checks once. Lengths and
// counts are checked against their limit and against the bytes present
// before the caller allocates for them (Count, Bytes). It never panics on
// any input and allocates nothing itself.
type Reader struct {
	b   []byte
	err error
}

// NewReader returns a Reader over b.
func NewReader(b []byte) Reader { return Reader{b: b} }

// Err returns the first error, or nil.
func (r *Reader) Err() error { return r.err }

// Fail records err if no error was recorded yet, and ends the message.
func (r *Reader) Fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

// Len is how many bytes are left.
func (r *Reader) Len() int { return len(r.b) }

// Rest returns the bytes left, for a decoder of its own to go on.
func (r *Reader) Rest() []byte { return r.b }

// SetRest continues after such a decoder: rest must be what is left of Rest.
func (r *Reader) SetRest(rest []byte) {
	if r.err == nil {
		r.b = rest
	}
}

// Bytes returns the next n bytes (aliasing the message; the capacity is
// capped so an append cannot overwrite what follows), or nil and
// ErrTruncated if fewer are left.
func (r *Reader) Bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.Fail(ErrTruncated)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// U8 reads a byte.
func (r *Reader) U8() uint8 {
	if v := r.Bytes(1); v != nil {
		return v[0]
	}
	return 0
}

// U16 reads a big-endian uint16.
func (r *Reader) U16() uint16 {
	if v := r.Bytes(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

// U32 reads a big-endian uint32.
func (r *Reader) U32() uint32 {
	if v := r.Bytes(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

// U64 reads a big-endian uint64.
func (r *Reader) U64() uint64 {
	if v := r.Bytes(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// Count checks a count n read from the message before the caller
// allocates n items: at most limit, and n items of at least minSize bytes
// each must fit in what is left. It returns n, or 0 after recording
// ErrTooMany or ErrTruncated.
func (r *Reader) Count(n, limit, minSize int) int {
	if r.err != nil {
		return 0
	}
	if n < 0 || n > limit {
		r.Fail(ErrTooMany)
		return 0
	}
	if minSize > 0 && n > len(r.b)/minSize {
		r.Fail(ErrTruncated)
		return 0
	}
	return n
}

// Addr reads an address (see ParseAddr).
func (r *Reader) Addr() netip.AddrPort {
	if r.err != nil {
		return netip.AddrPort{}
	}
	a, rest, err := ParseAddr(r.b)
	if err != nil {
		r.Fail(err)
		return netip.AddrPort{}
	}
	r.b = rest
	return a
}
