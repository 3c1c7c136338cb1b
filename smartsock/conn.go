package smartsock

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"hash"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/korium/korium-tun/internal/ratelimit"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/wire"
)

// Conn is the packet conn quic-go runs on. See the package comment.
type Conn struct {
	cfg  Config
	udp  UDP
	sys  SysUDP // udp as an OS socket, or nil
	self pki.Identity

	// Published by the path loop, read by any goroutine without a lock;
	// only the loop writes them (index.go). virt holds every peer, real
	// the direct paths that own their address, sess the relay paths that
	// own their session. Each peer's route is published in peer.rt.
	virt *addrIndex[*peer]
	real *addrIndex[*path]
	sess *sessIndex[*path]
	// dialBacks is how many dial-back nonces the loop waits for: 0 lets
	// the read path drop dial-back packets without asking it.
	dialBacks atomic.Int32
	// relayedIDs: the peers whose published route sends data through a
	// relay (RelayedPeers); replaced, never modified, when that changes.
	relayedIDs atomic.Pointer[[]pki.Identity]

	// Owned by the path loop (loop.go): no other goroutine touches them.
	waiters    map[uint64]chan PingResult
	dialBack   map[uint64]chan struct{}
	observed   netip.AddrPort // our address as a peer last reported it
	helloLimit ratelimit.Limiter
	probeLimit ratelimit.Limiter
	dirty      []*peer // peers whose route changed since the last publish
	// relayed holds the peers whose published route is relayed;
	// relayedChanged: relayedIDs is to be rebuilt from it.
	relayed        map[*peer]struct{}
	relayedChanged bool
	out            []outProbe
	scratch        [wire.HelloSignedSize]byte

	// readMu serializes reads (quic-go has one reader; x/net's batch
	// reader and ours are not safe for concurrent use) and guards the read
	// side's own state below. The one goroutine reading holds it for a
	// whole ReadBatch: the socket read, the demultiplexing and the relay
	// server's Forward of foreign frames. Nothing it calls takes it again,
	// and the path loop never waits for it (the read path reaches the loop
	// through its queue, with a bounded wait). Lock order: readMu, then
	// fwd.mu (taken by Forward's SendRelay).
	readMu      sync.Mutex
	helloSrc    *ratelimit.Keyed
	probeSrc    *ratelimit.Keyed
	resetLimit  ratelimit.Limiter
	refuseLimit ratelimit.Limiter // loop only
	resetMAC    hash.Hash
	seq         uint64      // of the last event posted
	waitTimer   *time.Timer // bounds a wait for the loop (await)

	// The path loop's inbox and its bookkeeping.
	events   chan event
	applied  atomic.Uint64 // seq of the newest event the loop applied
	doorbell chan struct{} // rung when an event the read path waits for is applied
	tick     bool          // the loop ticks itself (New); tests tick by hand
	// The loop's probe rounds (see loop): while every peer is idle and
	// nothing is due within a tick, it sleeps until the earliest due time
	// (sleeping) and a write that sets a peer's sent flag (sends counts
	// them) wakes it through kick. nextLook and wantTick are the loop's.
	sleeping atomic.Bool
	sends    atomic.Uint64
	kick     chan struct{}
	nextLook time.Time     // earliest idle peer's due time, zero: a peer needs every tick
	wantTick bool          // a peer was changed in the loop: next round one tick after the last
	rounds   atomic.Uint64 // probe rounds the loop ran (tests)
	done     chan struct{} // closed by Close: the loop stops
	loopDone chan struct{} // closed by the loop when it has stopped
	closing  sync.Once
	closeErr error

	forward  atomic.Pointer[RelayForwarder]
	fwd      fwdBatch
	relayBuf sync.Pool

	// ctlSent, when set (by tests, before any packet), is told of every
	// control packet (probe, reply, hello, reset) instead of its being
	// sent. It is called from the loop and from the read path.
	ctlSent func(dst netip.AddrPort, size int)

	txID  atomic.Uint64
	stats Stats
}

// RelayForwarder is the relay server's entry point: it gets every CRLY
// frame whose session is not one of ours and reports whether it was one of
// its sessions. It runs on the read path, with no lock of smartsock's held.
type RelayForwarder func(frame []byte, src netip.AddrPort, now time.Time) bool

// New wraps udp. The Conn owns udp from now on and closes it on Close.
func New(udp *net.UDPConn, cfg Config) (*Conn, error) {
	u, err := NewUDP(udp)
	if err != nil {
		return nil, err
	}
	return NewConn(u, cfg)
}

// NewConn runs a Conn on u, which it owns from now on and closes on Close.
// Over a u without a file descriptor (not a SysUDP), give quic-go
// PacketConn() rather than the Conn.
func NewConn(u UDP, cfg Config) (*Conn, error) { return newConn(u, cfg, true) }

// newConn starts the path loop; tick false leaves its probe ticks to the
// caller (tests drive them with a clock of their own, through tickAt).
func newConn(u UDP, cfg Config, tick bool) (*Conn, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Conn{
		cfg:         cfg,
		udp:         u,
		self:        cfg.Keypair.Identity(),
		virt:        newAddrIndex[*peer](),
		real:        newAddrIndex[*path](),
		sess:        newSessIndex[*path](),
		waiters:     make(map[uint64]chan PingResult),
		dialBack:    make(map[uint64]chan struct{}),
		relayed:     make(map[*peer]struct{}),
		helloLimit:  ratelimit.New(ratelimit.PerSecond(int64(cfg.HelloRate))),
		probeLimit:  ratelimit.New(ratelimit.PerSecond(int64(cfg.ProbeRate))),
		helloSrc:    ratelimit.NewKeyed(ratelimit.PerSecond(int64(cfg.HelloSourceRate)), srcBuckets),
		probeSrc:    ratelimit.NewKeyed(ratelimit.PerSecond(int64(cfg.ProbeSourceRate)), srcBuckets),
		resetLimit:  ratelimit.New(ratelimit.PerSecond(int64(cfg.ResetRate))),
		refuseLimit: ratelimit.New(ratelimit.PerSecond(refusalRate)),
		waitTimer:   time.NewTimer(time.Hour),
		events:      make(chan event, eventQueue),
		doorbell:    make(chan struct{}, 1),
		kick:        make(chan struct{}, 1),
		tick:        tick,
		done:        make(chan struct{}),
		loopDone:    make(chan struct{}),
	}
	c.waitTimer.Stop()
	c.sys, _ = u.(SysUDP)
	c.fwd.noGSO = c.sys == nil // GSO control messages mean something to the kernel only
	c.relayBuf.New = func() any { b := make([]byte, 0, relayBufSize); return &b }
	if cfg.StatelessResetKey != nil {
		c.resetMAC = hmac.New(sha256.New, cfg.StatelessResetKey[:])
	}
	go c.loop()
	return c, nil
}

// ---- plumbing quic-go needs -------------------------------------------------

// SyscallConn exposes the real socket so quic-go can set DF, detect GSO and
// read socket options. quic-go reads through ReadBatch, never the fd
// directly. Over a UDP without one it fails: see PacketConn.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	if c.sys == nil {
		return nil, errNoFD
	}
	return c.sys.SyscallConn()
}

// SetReadBuffer sets the socket's receive buffer.
func (c *Conn) SetReadBuffer(n int) error { return c.udp.SetReadBuffer(n) }

// SetWriteBuffer sets the socket's send buffer.
func (c *Conn) SetWriteBuffer(n int) error { return c.udp.SetWriteBuffer(n) }

// LocalAddr returns the real local address.
func (c *Conn) LocalAddr() net.Addr { return c.udp.LocalAddr() }

// SetDeadline implements net.PacketConn.
func (c *Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.udp.SetReadDeadline(t), c.udp.SetWriteDeadline(t))
}

// SetReadDeadline implements net.PacketConn.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.udp.SetReadDeadline(t) }

// SetWriteDeadline implements net.PacketConn.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// PacketConn returns what to give quic-go as its socket: the Conn itself
// over an OS socket (quic-go then uses GSO, ECN and batched reads), and
// over any other UDP a plain net.PacketConn view of it (quic-go reads and
// writes one packet at a time, as on any net.PacketConn).
func (c *Conn) PacketConn() net.PacketConn {
	if c.sys != nil {
		return c
	}
	return plainConn{c}
}

// plainConn hides the Conn's OOB and batch methods from quic-go.
type plainConn struct{ c *Conn }

func (p plainConn) ReadFrom(b []byte) (int, net.Addr, error)  { return p.c.ReadFrom(b) }
func (p plainConn) WriteTo(b []byte, a net.Addr) (int, error) { return p.c.WriteTo(b, a) }
func (p plainConn) Close() error                              { return p.c.Close() }
func (p plainConn) LocalAddr() net.Addr                       { return p.c.LocalAddr() }
func (p plainConn) SetDeadline(t time.Time) error             { return p.c.SetDeadline(t) }
func (p plainConn) SetReadDeadline(t time.Time) error         { return p.c.SetReadDeadline(t) }
func (p plainConn) SetWriteDeadline(t time.Time) error        { return p.c.SetWriteDeadline(t) }

// Close stops the path loop, waits for it, and closes the socket: blocked
// reads return net.ErrClosed, calls waiting for the loop return. It is
// idempotent.
func (c *Conn) Close() error {
	c.closing.Do(func() {
		close(c.done)
		<-c.loopDone
		c.closeErr = c.udp.Close()
	})
	return c.closeErr
}
