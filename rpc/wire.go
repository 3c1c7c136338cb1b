package rpc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Protocol IDs: the first byte of every request names its user.
const (
	ProtoDHT    byte = 1
	ProtoGossip byte = 2
	ProtoRelay  byte = 3
	ProtoApp    byte = 4
	ProtoCA     byte = 5 // threshold CA: DKG round-2 shares, commitments, signature shares
)

// KnownProto reports whether p is one of the protocol IDs above. Requests
// with any other ID are refused before their length is read.
func KnownProto(p byte) bool { return p >= ProtoDHT && p <= ProtoCA }

// MaxMessageSize caps a request or response payload of any protocol (the
// reference's MAX_RESPONSE_SIZE, 1 MiB). A larger length prefix is rejected
// before anything is allocated for it. Config.MaxSize lowers it per
// protocol.
const MaxMessageSize = 1 << 20

// Sizes holds a payload cap per protocol ID (the index). A zero entry means
// MaxMessageSize.
type Sizes [ProtoCA + 1]int

// Max returns proto's cap: its entry, or MaxMessageSize for a zero entry or
// an ID without one.
func (s *Sizes) Max(proto byte) int {
	if int(proto) < len(s) && s[proto] > 0 {
		return s[proto]
	}
	return MaxMessageSize
}

// MaxErrorText caps the error text in a non-OK response.
const MaxErrorText = 256

// Status is the first byte of a response.
type Status byte

// Response statuses.
const (
	StatusOK           Status = 0
	StatusRefused      Status = 1 // unknown protocol, no handler, or the handler refused
	StatusTooLarge     Status = 2 // request or response above the size limit
	StatusHandlerError Status = 3 // the handler failed; payload is its error text
	StatusTimeout      Status = 4 // the handler did not answer within its timeout
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRefused:
		return "refused"
	case StatusTooLarge:
		return "too large"
	case StatusHandlerError:
		return "handler error"
	case StatusTimeout:
		return "timeout"
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

func (s Status) valid() bool { return s <= StatusTimeout }

// Decoder errors. errFrameTooLarge and errUnknownProto are reported before
// the payload is read.
var (
	errUnknownProto  = errors.New("rpc: unknown protocol ID")
	errFrameTooLarge = errors.New("rpc: length prefix above the limit")
	errBadStatus     = errors.New("rpc: unknown response status")
	errBadVarint     = errors.New("rpc: malformed length prefix")
	errTrailing      = errors.New("rpc: data after the frame")
)

// expectEOF reads the end of a stream after its one frame. quic-go frees a
// stream's state (and gives the peer its stream credit back) only once the
// FIN has been read, not merely received, so both ends read it.
func expectEOF(r io.Reader) error {
	var b [1]byte
	n, err := r.Read(b[:])
	switch {
	case n > 0:
		return errTrailing
	case err == io.EOF:
		return nil
	case err == nil:
		return io.ErrNoProgress
	}
	return err
}

// AppendRequest appends a request frame: protocol ID, uvarint length,
// payload.
func AppendRequest(b []byte, proto byte, payload []byte) []byte {
	return append(appendHeader(b, proto, len(payload)), payload...)
}

// AppendResponse appends a response frame: status, uvarint length, payload.
func AppendResponse(b []byte, st Status, payload []byte) []byte {
	return append(appendHeader(b, byte(st), len(payload)), payload...)
}

// appendHeader appends what precedes an n-byte payload: the protocol ID or
// status, then the uvarint length. Call and the server write it apart from
// the payload, so a 1 MiB payload is not copied into a frame buffer.
func appendHeader(b []byte, first byte, n int) []byte {
	return binary.AppendUvarint(append(b, first), uint64(n))
}

// ReadRequest reads one request frame from r. It returns errUnknownProto
// without reading further when the protocol ID is unknown, and
// errFrameTooLarge when the length prefix exceeds max, before allocating.
func ReadRequest(r io.Reader, max int) (proto byte, payload []byte, err error) {
	var caps Sizes
	for i := range caps {
		caps[i] = max
	}
	return readRequest(r, &caps, nil)
}

// readRequest is ReadRequest with a cap per protocol and, when res is not
// nil, every buffer it grows reserved from res first.
func readRequest(r io.Reader, caps *Sizes, res *reservation) (proto byte, payload []byte, err error) {
	var b [1]byte // one scratch byte for the whole header: it escapes once
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, nil, err
	}
	proto = b[0]
	if !KnownProto(proto) {
		return proto, nil, errUnknownProto
	}
	payload, err = readPayload(r, caps.Max(proto), res, &b)
	return proto, payload, err
}

// ReadResponse reads one response frame from r, with the same limits as
// ReadRequest. Error texts are capped at MaxErrorText.
func ReadResponse(r io.Reader, max int) (st Status, payload []byte, err error) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, nil, err
	}
	st = Status(b[0])
	if !st.valid() {
		return st, nil, errBadStatus
	}
	if st != StatusOK {
		max = MaxErrorText
	}
	payload, err = readPayload(r, max, nil, &b)
	return st, payload, err
}

// firstChunk is the payload buffer made when the first payload byte
// arrives; it doubles as more arrive.
const firstChunk = 4 << 10

// readPayload reads a uvarint length and that many bytes. Nothing is
// allocated (or reserved from res) for the announced length until its first
// byte has arrived; then the buffer starts at 4 KiB and doubles as bytes
// actually arrive, never past n, each growth reserved from res before it is
// made. A peer that announces 1 MiB and sends nothing thus costs nothing,
// one that sends half of it holds at most what it sent, rounded up to the
// next buffer size, and a full 1 MiB payload is held in exactly 1 MiB.
// scratch is a byte the caller has already paid for.
func readPayload(r io.Reader, limit int, res *reservation, scratch *[1]byte) ([]byte, error) {
	n64, err := readUvarint(r, scratch)
	if err != nil {
		return nil, err
	}
	if n64 > uint64(limit) {
		return nil, errFrameTooLarge
	}
	n := int(n64)
	if n == 0 {
		return []byte{}, nil
	}
	if _, err := io.ReadFull(r, scratch[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	var buf []byte
	for len(buf) < n {
		if len(buf) == cap(buf) {
			size := min(n, max(firstChunk, 2*cap(buf)))
			if err := res.grow(size - cap(buf)); err != nil {
				return nil, err
			}
			if buf == nil {
				buf = append(make([]byte, 0, size), scratch[0])
			} else {
				buf = append(make([]byte, 0, size), buf...)
			}
			continue // the first byte may have been the last
		}
		got, err := io.ReadFull(r, buf[len(buf):cap(buf)]) // cap(buf) <= n
		buf = buf[:len(buf)+got]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

// readUvarint reads a uvarint one byte at a time, so nothing past the
// prefix is consumed.
func readUvarint(r io.Reader, buf *[1]byte) (uint64, error) {
	var (
		x uint64
		s uint
	)
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			if err == io.EOF && i > 0 {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		b := buf[0]
		if b < 0x80 {
			// Only the shortest encoding is accepted, so every frame has
			// exactly one form.
			if (i > 0 && b == 0) || (i == binary.MaxVarintLen64-1 && b > 1) {
				return 0, errBadVarint
			}
			return x | uint64(b)<<s, nil
		}
		x |= uint64(b&0x7f) << s
		s += 7
	}
	return 0, errBadVarint
}
