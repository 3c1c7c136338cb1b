package datapath

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/internal/group"
	"github.com/korium/korium-tun/peers"
)

// Peers is the peer set the datapath routes to.
type Peers interface {
	Snapshot() *peers.Snapshot
}

// ErrNoOwner is wrapped by a Config.Resolve error that means nobody owns
// the address (its packets are answered with Destination Unreachable);
// any other error means an owner was found but not reached, which may
// pass (its packets are only dropped).
var ErrNoOwner = errors.New("no node owns the address")

// Config configures an Engine. Addr, MTU, Device and Peers are required;
// zero values of the others mean their defaults.
type Config struct {
	// Addr is our SmartAddr.
	Addr netip.Addr
	// MTU is the largest packet the tunnel carries, MinMTU..MaxMTU.
	MTU int
	// Device is the device the engine drives; it owns it from New on. Its
	// Write may be called from several goroutines at once (the device
	// writer, and a receiver writing a quiet peer's packet itself), as
	// wireguard-go's per-peer receivers do: wireguard-go's TUN and the
	// netstack serialize their writes.
	Device tun.Device
	// Peers is the set packets are routed to.
	Peers Peers
	// Resolve finds and connects the owner of an overlay address nobody
	// is connected to (see ErrNoOwner), within ctx. Nil: only connected
	// peers are reachable; a held packet that expires is answered with
	// Destination Unreachable, as nobody will ever own its address.
	Resolve func(ctx context.Context, dst netip.Addr) error
	// ResolveTimeout bounds one resolution (default 10 s).
	ResolveTimeout time.Duration
	// ResolveFailTTL is how long a failed resolution is remembered
	// (default 1 s).
	ResolveFailTTL time.Duration
	// PendingTimeout is how long a held packet waits (default 3 s).
	PendingTimeout time.Duration
	// MaxPending caps addresses with a held packet, and remembered
	// failures (default 1,024).
	MaxPending int
	// UnreachNoRoute answers dead destinations with ICMPv6 Destination
	// Unreachable code 0 (no route) instead of 3 (address unreachable):
	// gVisor passes only codes 0 and 4 on to its sockets and drops code 3
	// (network/ipv6/icmp.go, handleICMP), so a netstack Dial would not
	// fail on it.
	UnreachNoRoute bool
	// CoalesceCopy copies every inbound packet into a 64 KiB buffer before
	// the device write, so that a kernel TUN with offload can coalesce
	// consecutive TCP segments in place. The netstack coalesces on its own
	// and needs no copy.
	CoalesceCopy bool
	// SendQueue is each peer's send queue, in packets (default 1,024, as
	// wireguard-go's per-peer queue). A full queue drops the oldest packet
	// of its longest flow (counted). It absorbs the moments the peer's
	// sender waits for a CPU: with 256, a TCP stream at 1-2 Gbit/s between
	// two namespaces lost 6% of its packets here (30,000 in 5 s, each an
	// inner-TCP retransmit), with 1,024 none (scripts/blackhole-test.sh).
	SendQueue int
	// MaxQueued caps packets queued to all peers together (default
	// 8,192, about 12 MiB): beyond it a peer's new packet takes the buffer
	// of the oldest packet of the longest queue, if that is at least two
	// packets longer than the peer's own (so dead peers' full queues give
	// way to the others), else replaces the oldest of its own longest
	// flow, or is dropped (counted) if it has none queued.
	MaxQueued int
	// Logger receives device events; nil discards. No line per packet.
	Logger *slog.Logger
	// OnFail is called once when the device is gone or keeps failing:
	// the engine has stopped reading or writing it, and the node stops.
	OnFail func(err error)
	// Firewall judges peers' datagrams before the device write and learns
	// the flows the device sends (firewall.go); nil: none.
	Firewall *firewall.Firewall
	// FirewallSPIFFE returns where p's SPIFFE ID that Firewall's patterns
	// may match is kept (one a CA vouches for; nil or "" for none) and its
	// expiry in unix ns; a renewal may push the expiry or rename the ID.
	// Nil: no peer's SPIFFE ID counts.
	FirewallSPIFFE func(p *peers.Peer) (*atomic.Pointer[string], *atomic.Int64)
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ResolveTimeout, 10*time.Second)
	def(&c.ResolveFailTTL, time.Second)
	def(&c.PendingTimeout, 3*time.Second)
	if c.MaxPending <= 0 {
		c.MaxPending = 1024
	}
	if c.SendQueue <= 0 {
		c.SendQueue = 1024
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 8192
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.OnFail == nil {
		c.OnFail = func(error) {}
	}
	return c
}

// Counters are the datapath's drop and traffic counters, by reason.
type Counters struct {
	TxNotIPv6, TxNotOverlay, TxNoPeer, TxTooBig, TxSendError atomic.Uint64
	// TxQueueDropped: a peer's send queue lost its oldest packet (it was
	// full, or every queue together was and it was the longest);
	// TxQueueFull: every queue together was at MaxQueued and neither
	// another queue nor the peer's own had a packet to make room.
	TxQueueDropped, TxQueueFull atomic.Uint64
	// Of TxQueueDropped, by why the read loop did not wait for room
	// (backpressure.go): TxQueueStalled, a wait for the peer timed out and
	// its sender has not drained half a queue since; TxQueueOverBudget, the
	// peer spent its wait budget while other peers had traffic.
	TxQueueStalled, TxQueueOverBudget atomic.Uint64
	// TxQueueWaits: waits for room that got it; TxQueueWaitTimeouts: waits
	// that timed out (each stalls the queue); TxQueueWaitNanos: the read
	// loop's time spent waiting, all together.
	TxQueueWaits, TxQueueWaitTimeouts, TxQueueWaitNanos atomic.Uint64
	// TxDirect: packets the read loop sent straight to an idle peer's
	// connection; RxDirect: packets a receiver wrote straight to the idle
	// device.
	TxDirect, RxDirect                              atomic.Uint64
	RxMalformed, RxSpoofedSource, RxNotForUs        atomic.Uint64
	RxNotRoutable                                   atomic.Uint64 // from a peer that carries no IP packets
	DevReadErrors, DevWriteErrors, PendingDelivered atomic.Uint64
	ResolveOK, ResolveFailed, TxResolveFailed       atomic.Uint64
	ResolveBusy, ICMPUnreachSent, ICMPRateLimited   atomic.Uint64
	ICMPQueueFull                                   atomic.Uint64 // a Packet Too Big found the writer's queue full
}

// Engine is the datapath of one device. Create it with New; Close stops it.
type Engine struct {
	cfg      Config
	dev      tun.Device
	devName  string // for errors: a deleted device has no name any more
	Counters Counters

	ctx    context.Context
	cancel context.CancelFunc
	group  group.Group // the loops, senders, receivers, resolutions
	once   sync.Once

	inbound   chan *pbuf    // checked packets and ICMPv6 answers for the device writer
	rxPool    sync.Pool     // *pbuf
	txPool    sync.Pool     // *txBuf
	queued    atomic.Int64  // txBufs out of txPool (in queues, or being sent)
	toWrite   atomic.Int64  // packets handed to the device writer and not yet written (writeDirect)
	icmpLimit *rate.Limiter // ICMPv6 errors we make up (Destination Unreachable)

	pend pending
	fw   fwHook // firewall.go
}

// pbuf holds one packet on its way to the device: a datagram read
// straight into it, or an ICMPv6 answer.
type pbuf struct {
	b [devOffset + maxDatagram]byte
	n int
}

// txBuf holds one packet in a peer's send queue.
type txBuf struct {
	b    [MaxMTU]byte
	n    int
	next *txBuf // the next packet of its flow
}

// inboundQueueLen bounds packets between the receivers and the device
// writer (at most inboundQueueLen * 1.5 KiB). It is large so that quic-go's
// own datagram queues, which drop when full, are drained quickly even
// while the writer is inside a slow device write.
const inboundQueueLen = 4096

// ICMPRate limits the ICMPv6 errors the engine makes up on its own
// (Destination Unreachable) to as many a second, with bursts of as many,
// whatever floods the device with packets to dead addresses.
const ICMPRate = 100

// New starts the datapath on cfg.Device: its read, write and housekeeping
// loops. Peers join it with PeerUp.
func New(cfg Config) (*Engine, error) {
	if cfg.Device == nil || cfg.Peers == nil || !cfg.Addr.IsValid() {
		return nil, errors.New("datapath: Config.Addr, Device and Peers are required")
	}
	if cfg.MTU < MinMTU || cfg.MTU > MaxMTU {
		return nil, fmt.Errorf("datapath: Config.MTU %d outside %d..%d", cfg.MTU, MinMTU, MaxMTU)
	}
	cfg = cfg.withDefaults()
	e := &Engine{
		cfg:       cfg,
		dev:       cfg.Device,
		inbound:   make(chan *pbuf, inboundQueueLen),
		icmpLimit: rate.NewLimiter(ICMPRate, ICMPRate),
	}
	e.rxPool.New = func() any { return new(pbuf) }
	e.txPool.New = func() any { return new(txBuf) }
	e.pend.init()
	var err error
	if e.devName, err = e.dev.Name(); err != nil {
		e.devName = "(unnamed)"
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.goRun(e.readLoop)
	e.goRun(e.writeLoop)
	e.goRun(e.housekeeping)
	e.startFirewall()
	return e, nil
}

// goRun runs f as one of the engine's goroutines, unless Close began.
func (e *Engine) goRun(f func()) bool { return e.group.Go(f) }

// Close stops the datapath: it closes the device (which ends its reads)
// and waits for every goroutine. Close the peers' connections first: a
// sender blocked in SendDatagram returns only when its connection closes.
func (e *Engine) Close() error {
	var err error
	e.once.Do(func() {
		e.cancel()
		err = e.dev.Close()
		e.group.Wait()
	})
	return err
}

// DeviceName is the device's name as it was at start.
func (e *Engine) DeviceName() string { return e.devName }

// PeerUp starts carrying p's datagrams to the device, and sends p the
// packet held for its address, if any. The peer set calls it (through the
// host) once per installed peer; p's receiver ends with its connection.
func (e *Engine) PeerUp(p *peers.Peer) {
	if e.ctx.Err() != nil {
		return
	}
	e.goRun(func() { e.receive(p) })
	if !p.Routable {
		return
	}
	if h := e.pend.take(p.Addr); h != nil {
		// The connection is new: its datagram queue has room, and this
		// goroutine (the installer's) is not the device reader's.
		if p.Conn.SendDatagram(h) == nil {
			e.Counters.PendingDelivered.Add(1)
			p.TxPackets.Add(1)
			p.TxBytes.Add(uint64(len(h)))
		}
	}
}

// fail tells the host the engine stopped using the device (the host logs
// err: it stops the node).
func (e *Engine) fail(err error) { e.cfg.OnFail(err) }

// housekeeping expires held packets and failed resolutions.
func (e *Engine) housekeeping() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case now := <-t.C:
			e.expirePending(now)
			e.fw.clock.Store(now.UnixNano()) // firewall.go
		}
	}
}
