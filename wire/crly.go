package wire

import "errors"

// Relay frame (CRLY) header, as in the reference:
//
//	magic "CRLY" (4) | session ID (16) | QUIC payload
//
// A relay forwards the frame whole and never looks past the header, so the
// end-to-end QUIC connection stays end-to-end.
const (
	RelayMagic      = "CRLY"
	SessionSize     = 16
	RelayHeaderSize = len(RelayMagic) + SessionSize
)

// Errors of the packet parsers.
var (
	ErrMagic     = errors.New("wire: bad magic")
	ErrProbeType = errors.New("wire: unknown probe type")
	ErrSize      = errors.New("wire: probe has the wrong length")
)

// IsRelay reports whether b starts with the CRLY magic (it may still be
// too short to hold a header).
func IsRelay(b []byte) bool { return len(b) >= 4 && string(b[:4]) == RelayMagic }

// RelayHeader is the fixed part of a CRLY frame.
type RelayHeader struct {
	Session [SessionSize]byte
}

// AppendRelayHeader appends a CRLY header to b.
func AppendRelayHeader(b []byte, h RelayHeader) []byte {
	b = append(b, RelayMagic...)
	return append(b, h.Session[:]...)
}

// ParseRelayHeader decodes a CRLY header and returns the payload after it.
func ParseRelayHeader(b []byte) (RelayHeader, []byte, error) {
	var h RelayHeader
	if len(b) < RelayHeaderSize {
		return h, nil, ErrTruncated
	}
	if string(b[:4]) != RelayMagic {
		return h, nil, ErrMagic
	}
	copy(h.Session[:], b[4:RelayHeaderSize])
	return h, b[RelayHeaderSize:], nil
}

// RelaySession returns the session of a CRLY frame without copying the
// rest, and whether b is one (magic and a whole header).
func RelaySession(b []byte) ([SessionSize]byte, bool) {
	if len(b) < RelayHeaderSize || string(b[:4]) != RelayMagic {
		return [SessionSize]byte{}, false
	}
	return [SessionSize]byte(b[4:RelayHeaderSize]), true
}
