package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/korium/korium-tun/smartaddr"
)

// nicID is the stack's only NIC.
const nicID tcpip.NICID = 1

// batchSize is how many packets Read returns and Write takes at most per
// call, the same as the kernel TUN with offload, so that one GSO
// super-packet always fits.
const batchSize = 128

// maxPacket bounds a packet the stack emits, GSO super-packets included.
const maxPacket = ipv6HeaderLen + gsoMaxSize

// maxTCP6Header is the longest IPv6 + TCP header (TCP options included).
const maxTCP6Header = ipv6HeaderLen + 60

// Stack is an in-process IPv6 stack that owns one SmartAddr. It implements
// tun.Device for the overlay's packet loop and offers Dial and Listen for
// Go programs. All methods are safe for concurrent use.
type Stack struct {
	addr   netip.Addr
	mtu    int
	log    *slog.Logger
	stack  *stack.Stack
	ep     linkEndpoint
	events chan tun.Event

	ctx    context.Context // canceled by Close; unblocks Read
	cancel context.CancelFunc

	// readMu guards all following fields; it serializes Read.
	readMu  sync.Mutex
	pending *stack.PacketBuffer // dequeued but did not fit the last batch
	hdr     [maxTCP6Header]byte // a GSO super-packet's headers
	pieces  [][]byte            // its payload: slices of its views

	// writeMu guards all following fields; it serializes Write.
	writeMu sync.Mutex
	closed  bool
	pkts    [][]byte  // the TCP packets of the batch being written
	gro     coalescer // groups them

	closeOnce sync.Once
	stats     counters
}

// counters count dropped packets by reason; see Stats for their meaning.
type counters struct {
	invalidInbound, badChecksum, oversizedOutbound, badGSO atomic.Uint64
}

// Stats counts packets the device dropped, by reason.
type Stats struct {
	// InvalidInbound: Write got something that is not an IPv6 packet.
	InvalidInbound uint64
	// BadChecksum: Write got a TCP, UDP or ICMPv6 packet with a bad
	// checksum or a payload length that disagrees with its size.
	BadChecksum uint64
	// OversizedOutbound: an outbound packet did not fit the caller's
	// buffers (Read returned tun.ErrTooManySegments).
	OversizedOutbound uint64
	// BadGSO: a super-packet from the stack could not be segmented.
	BadGSO uint64
}

var _ tun.Device = (*Stack)(nil)

// New creates a Stack owning cfg.Addr with a route for fd00:c0f1::/32.
func New(cfg Config) (*Stack, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Stack{
		addr:   cfg.Addr,
		mtu:    cfg.MTU,
		log:    cfg.Logger,
		ep:     newLinkEndpoint(cfg.QueueLen, cfg.MTU),
		events: make(chan tun.Event, 1),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.stack = stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{ipv6.NewProtocolWithOptions(ipv6.Options{
			// The overlay is a point-to-point link with no neighbours:
			// no DAD, router solicitations or MLD reports, which would
			// only be packets to multicast groups the overlay drops.
			DADConfigs: stack.DADConfigurations{DupAddrDetectTransmits: 0},
			NDPConfigs: ipv6.NDPConfigurations{MaxRtrSolicitations: 0},
			MLD:        ipv6.MLDOptions{Enabled: false},
		})},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		HandleLocal:        true,
	})
	if err := s.configure(cfg); err != nil {
		s.stack.Close()
		s.stack.Wait()
		s.ep.Close()
		return nil, err
	}
	s.events <- tun.EventUp
	s.log.Debug("netstack up", "addr", cfg.Addr, "mtu", cfg.MTU, "tcp_buffer_max", cfg.MaxTCPBufferSize)
	return s, nil
}

func (s *Stack) configure(cfg Config) error {
	opts := []struct {
		name string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"SACK", ptr(tcpip.TCPSACKEnabled(true))},
		// RACK loss detection off: with it, TCP stalled for good after a
		// handful of losses (TestTCPTransferWithLoss); SACK-based fast
		// retransmit recovers. The overlay's datagrams do get lost.
		{"recovery", ptr(tcpip.TCPRecovery(0))},
		{"receive buffer", &tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: cfg.TCPBufferSize, Max: cfg.MaxTCPBufferSize}},
		{"send buffer", &tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: cfg.TCPBufferSize, Max: cfg.MaxTCPBufferSize}},
		{"receive buffer auto-tuning", ptr(tcpip.TCPModerateReceiveBufferOption(true))},
		{"congestion control", ptr(tcpip.CongestionControlOption("cubic"))},
	}
	for _, o := range opts {
		if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); err != nil {
			return fmt.Errorf("netstack: set TCP %s: %v", o.name, err)
		}
	}
	if err := s.stack.CreateNIC(nicID, s.ep); err != nil {
		return fmt.Errorf("netstack: create NIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom16(cfg.Addr.As16()).WithPrefix(),
	}
	if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("netstack: add address %v: %v", cfg.Addr, err)
	}
	s.stack.SetRouteTable([]tcpip.Route{{Destination: overlaySubnet(), NIC: nicID}})
	return nil
}

func ptr[T any](v T) *T { return &v }

// overlaySubnet is smartaddr.Prefix as a gVisor subnet.
func overlaySubnet() tcpip.Subnet {
	p := smartaddr.Prefix
	var mask [16]byte
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom16(p.Masked().Addr().As16()), tcpip.MaskFromBytes(mask[:]))
	if err != nil {
		panic(err) // smartaddr.Prefix is a constant
	}
	return sub
}

// Addr returns the SmartAddr the stack owns.
func (s *Stack) Addr() netip.Addr { return s.addr }

// Stats returns the drop counters.
func (s *Stack) Stats() Stats {
	return Stats{
		InvalidInbound:    s.stats.invalidInbound.Load(),
		BadChecksum:       s.stats.badChecksum.Load(),
		OversizedOutbound: s.stats.oversizedOutbound.Load(),
		BadGSO:            s.stats.badGSO.Load(),
	}
}

// Name implements tun.Device.
func (s *Stack) Name() (string, error) { return "korium-netstack", nil }

// File implements tun.Device; there is no file descriptor.
func (s *Stack) File() *os.File { return nil }

// MTU implements tun.Device.
func (s *Stack) MTU() (int, error) { return s.mtu, nil }

// BatchSize implements tun.Device.
func (s *Stack) BatchSize() int { return batchSize }

// Events implements tun.Device: EventUp once, closed by Close.
func (s *Stack) Events() <-chan tun.Event { return s.events }

// Read implements tun.Device. It blocks until the stack has at least one
// packet to send or the Stack is closed, then fills as many of bufs as
// packets are ready, splitting GSO super-packets into MTU-sized segments.
// Each packet starts at bufs[i][offset:]. A super-packet that does not fit
// the rest of the batch waits for the next call; one that does not fit a
// whole batch, or a packet larger than its buffer, is dropped, counted and
// reported as tun.ErrTooManySegments (as the kernel TUN does) if nothing
// else was read. Packets the stack built wrongly are dropped and counted
// without an error, so that the caller's loop keeps running. After Close it
// returns os.ErrClosed.
func (s *Stack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	n := 0
	for n < len(bufs) {
		pkt := s.pending
		s.pending = nil
		if pkt == nil {
			if n == 0 {
				pkt = s.ep.ReadContext(s.ctx)
				if pkt == nil {
					return 0, os.ErrClosed
				}
			} else if pkt = s.ep.Read(); pkt == nil {
				break
			}
		}
		m, err := s.emit(pkt, bufs[n:], sizes[n:], offset)
		if err == errNoRoom {
			if n > 0 {
				s.pending = pkt // first in the next batch
				break
			}
			s.stats.oversizedOutbound.Add(1)
			pkt.DecRef()
			return 0, tun.ErrTooManySegments
		}
		pkt.DecRef()
		n += m
	}
	return n, nil
}

// errNoRoom means a packet needs more buffers than emit was given.
var errNoRoom = errors.New("netstack: batch full")

// emit copies pkt into bufs, segmenting it if it is a GSO super-packet. It
// returns errNoRoom, having written nothing, if pkt needs more (or larger)
// buffers than given; any other error means pkt was dropped and counted.
func (s *Stack) emit(pkt *stack.PacketBuffer, bufs [][]byte, sizes []int, offset int) (int, error) {
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone {
		dst := bufs[0][offset:]
		if pkt.Size() > len(dst) {
			return 0, errNoRoom
		}
		sizes[0] = flatten(pkt, dst)
		return 1, nil
	}
	size := pkt.Size()
	if size > maxPacket {
		s.stats.badGSO.Add(1)
		return 0, errBadGSOLength
	}
	// Segment straight out of the packet's views: its headers are copied
	// out (they are rewritten per segment), its payload read in place.
	s.pieces = s.pieces[:0]
	vl, skip := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		s.pieces = append(s.pieces, b[skip:])
		skip = 0
	}
	hdr := s.hdr[:gather(s.hdr[:min(size, len(s.hdr))], s.pieces)]
	hl, err := tcp6HeaderLenOf(hdr, size)
	if err != nil {
		s.stats.badGSO.Add(1)
		return 0, err
	}
	mss := int(gso.MSS)
	if mss == 0 || mss > s.mtu-hl {
		mss = s.mtu - hl
	}
	segs := tcp6Segments(size, hl, mss)
	if segs > len(bufs) {
		return 0, errNoRoom
	}
	for _, b := range bufs[:segs] {
		if len(b) < offset+hl+min(mss, size-hl) {
			return 0, errNoRoom
		}
	}
	n, err := splitTCP6Pieces(hdr[:hl], trimFront(s.pieces, hl), size-hl, mss, bufs, sizes, offset)
	clear(s.pieces) // do not keep the packet's chunks reachable
	if err != nil {
		s.stats.badGSO.Add(1)
		return 0, err
	}
	return n, nil
}

// gather copies the first len(dst) bytes held in pieces into dst and
// returns how many there were.
func gather(dst []byte, pieces [][]byte) int {
	n := 0
	for _, p := range pieces {
		if n == len(dst) {
			break
		}
		n += copy(dst[n:], p)
	}
	return n
}

// trimFront drops the first k bytes from pieces, in place.
func trimFront(pieces [][]byte, k int) [][]byte {
	for len(pieces) > 0 && k >= len(pieces[0]) {
		k -= len(pieces[0])
		pieces = pieces[1:]
	}
	if len(pieces) > 0 {
		pieces[0] = pieces[0][k:]
	}
	return pieces
}

// flatten copies the whole packet (headers and data) into dst, which must
// be large enough, without allocating.
func flatten(pkt *stack.PacketBuffer, dst []byte) int {
	vl, skip := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		n += copy(dst[n:], b[skip:])
		skip = 0
	}
	return n
}

// Write implements tun.Device: it hands each bufs[i][offset:] to the stack
// as an inbound IPv6 packet. It checks TCP, UDP and ICMPv6 checksums itself
// and drops and counts bad packets, then coalesces consecutive TCP segments
// of a flow (GRO) before the stack processes them. Packets with extension
// headers (fragments) reach the stack without a transport checksum check;
// the overlay's QUIC already protects them in transit. Packets that are
// not IPv6 are dropped and counted; the stack drops what is not for its
// address. Write does not modify bufs. After Close it returns os.ErrClosed.
func (s *Stack) Write(bufs [][]byte, offset int) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return 0, os.ErrClosed
	}
	// Verified packets are gathered into s.pkts; TCP segments are grouped
	// and delivered after the others, which only reorders across flows.
	s.pkts = s.pkts[:0]
	for _, b := range bufs {
		if len(b) <= offset {
			continue
		}
		p := b[offset:]
		if len(p) < header.IPv6MinimumSize || p[0]>>4 != 6 {
			s.stats.invalidInbound.Add(1)
			continue
		}
		ok, checked := verifyTransportChecksum(p)
		if checked && !ok {
			s.stats.badChecksum.Add(1)
			continue
		}
		if !checked || p[ipv6NextHeader] != tcpProto {
			s.inject(buffer.MakeWithData(p))
			continue
		}
		s.pkts = append(s.pkts, p)
	}
	s.gro.reset(len(s.pkts))
	for i := range s.pkts {
		s.gro.add(s.pkts, i)
	}
	for i := range s.gro.groups {
		s.inject(s.gro.build(s.pkts, &s.gro.groups[i]))
	}
	clear(s.pkts) // do not keep the caller's buffers alive
	return len(bufs), nil
}

// inject hands one inbound IPv6 packet to the stack, taking ownership of b.
func (s *Stack) inject(b buffer.Buffer) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: b})
	s.ep.InjectInbound(header.IPv6ProtocolNumber, pkt)
	pkt.DecRef()
}

// Close implements tun.Device. It unblocks Read, closes every connection and
// listener of the stack and waits for the stack's goroutines. It is
// idempotent.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.writeMu.Lock()
		s.closed = true
		s.writeMu.Unlock()
		s.stack.Close()
		s.stack.Wait()
		s.ep.Close()
		s.readMu.Lock()
		if s.pending != nil {
			s.pending.DecRef()
			s.pending = nil
		}
		s.readMu.Unlock()
		close(s.events)
	})
	return nil
}
