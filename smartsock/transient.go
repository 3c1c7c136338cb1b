package smartsock

import (
	"errors"
	"syscall"
)

// A send that fails because the network is not there right now (a link
// flapping, a route being replaced, an address coming back after DAD, a full
// device queue, a firewall rule) is a lost packet, not a broken connection:
// quic-go closes the connection on any write error but EMSGSIZE, so
// smartsock reports these as sent and counts them by kind (Stats.TxErr*),
// and QUIC's loss recovery resends what matters. Every other error still
// reaches quic-go: EMSGSIZE drives its path-MTU discovery, EIO its GSO
// fallback, and a closed socket is final.

// txErrKind is the kind of a transient send error.
type txErrKind int

const (
	txErrNone txErrKind = iota // not transient
	txErrNetUnreach
	txErrHostUnreach
	txErrNetDown
	txErrAddrNotAvail
	txErrNoBufs
	txErrPerm
)

// transientKind classifies a send error.
func transientKind(err error) txErrKind {
	var errno syscall.Errno
	if err == nil || !errors.As(err, &errno) {
		return txErrNone
	}
	return errnoKind(errno)
}

// countTransient counts err if it is transient and reports whether it was.
func (c *Conn) countTransient(err error) bool {
	s := &c.stats
	switch transientKind(err) {
	case txErrNetUnreach:
		s.TxErrNetUnreach.Add(1)
	case txErrHostUnreach:
		s.TxErrHostUnreach.Add(1)
	case txErrNetDown:
		s.TxErrNetDown.Add(1)
	case txErrAddrNotAvail:
		s.TxErrAddrNotAvail.Add(1)
	case txErrNoBufs:
		s.TxErrNoBufs.Add(1)
	case txErrPerm:
		s.TxErrPerm.Add(1)
	default:
		return false
	}
	return true
}
