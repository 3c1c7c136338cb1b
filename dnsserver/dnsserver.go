// Package dnsserver is the node's DNS responder for peer names: it answers
// NAME.korium. AAAA with the peer's SmartAddr, and PTR under
// 1.f.0.c.0.0.d.f.ip6.arpa. (fd00:c0f1::/32) with the name of that
// SmartAddr's peer. It is authoritative for those two zones, recurses for
// nothing, and answers only queries from this host: a query whose source
// is not one of this host's addresses (loopback, an interface address,
// the node's SmartAddr on its TUN) gets REFUSED, at a bounded rate. Another
// overlay peer's query arrives through the TUN from that peer's SmartAddr,
// which is never ours (the node drops tunnel packets whose source is not
// their sender's own SmartAddr), so peers are refused.
//
// One goroutine serves one UDP socket: a query is read into a fixed buffer,
// answered into another, and nothing per query outlives it. It imports
// nothing of this project.
package dnsserver

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Zone is the forward zone; ReverseZone is fd00:c0f1::/32's ip6.arpa zone.
const (
	Zone        = "korium."
	ReverseZone = "1.f.0.c.0.0.d.f.ip6.arpa."
)

// overlayPrefix is the /32 whose PTRs we answer.
var overlayPrefix = netip.MustParsePrefix("fd00:c0f1::/32")

// Limits.
const (
	maxQuery    = 1232 // bytes read of a query; longer ones are cut and fail to parse
	maxResponse = 512  // plain DNS over UDP; our answers are far smaller
	refuseRate  = 20   // REFUSED answers per second to sources not on this host
	refuseBurst = 40
)

// Config configures a Server. Lookup is required.
type Config struct {
	// Lookup returns the SmartAddr of a name (one DNS label, lowercase).
	Lookup func(name string) (netip.Addr, bool)
	// Reverse returns the name of the peer owning a SmartAddr.
	Reverse func(addr netip.Addr) (string, bool)
	// Local reports whether a source address is this host's. Nil: loopback
	// or an address of one of this host's interfaces (see LocalAddrs).
	Local func(netip.Addr) bool
	// TTL of answers; 0 means 60 s. Negative answers are cached 5 s.
	TTL    time.Duration
	Logger *slog.Logger
}

// Stats are the responder's counters.
type Stats struct {
	Queries       uint64 `json:"queries"`        // well-formed queries from this host
	Answered      uint64 `json:"answered"`       // NOERROR with an answer
	NoData        uint64 `json:"no_data"`        // NOERROR without one (the name exists, not that type)
	NXDomain      uint64 `json:"nxdomain"`       // name unknown in our zones
	Refused       uint64 `json:"refused"`        // source not on this host
	RefusedZone   uint64 `json:"refused_zone"`   // a name outside our zones
	RefuseLimited uint64 `json:"refuse_limited"` // REFUSED not sent: over refuseRate
	Malformed     uint64 `json:"malformed"`      // undecodable, a response, or not one question
	NotImpl       uint64 `json:"not_implemented"`
}

// Server answers DNS queries on one UDP socket.
type Server struct {
	cfg  Config
	conn *net.UDPConn
	wg   sync.WaitGroup

	// Owned by the serve goroutine.
	tokens     float64
	lastRefill time.Time

	queries, answered, noData, nxdomain, refused, refusedZone atomic.Uint64
	refuseLimited, malformed, notImpl                         atomic.Uint64
	closeOnce                                                 sync.Once
}

// Serve answers queries on conn (which the Server owns from now on) until
// Close.
func Serve(conn *net.UDPConn, cfg Config) *Server {
	if cfg.TTL <= 0 {
		cfg.TTL = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Local == nil {
		cfg.Local = NewLocalAddrs().Contains
	}
	if cfg.Reverse == nil {
		cfg.Reverse = func(netip.Addr) (string, bool) { return "", false }
	}
	s := &Server{cfg: cfg, conn: conn, tokens: refuseBurst, lastRefill: time.Now()}
	s.wg.Add(1)
	go s.serve()
	return s
}

// Addr is the socket's address.
func (s *Server) Addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close stops serving and waits for the serve goroutine.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.conn.Close() })
	s.wg.Wait()
	return err
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Queries: s.queries.Load(), Answered: s.answered.Load(), NoData: s.noData.Load(),
		NXDomain: s.nxdomain.Load(), Refused: s.refused.Load(), RefusedZone: s.refusedZone.Load(),
		RefuseLimited: s.refuseLimited.Load(), Malformed: s.malformed.Load(), NotImpl: s.notImpl.Load(),
	}
}

func (s *Server) serve() {
	defer s.wg.Done()
	in := make([]byte, maxQuery)
	out := make([]byte, 0, maxResponse)
	for temp := 0; ; {
		n, src, err := s.conn.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if temp++; temp > 100 {
				s.cfg.Logger.Warn("DNS responder stops after repeated read errors", "err", err)
				return
			}
			continue
		}
		temp = 0
		resp := s.answer(src.Addr().Unmap(), in[:n], out[:0], time.Now())
		if len(resp) > 0 {
			s.conn.WriteToUDPAddrPort(resp, src)
		}
	}
}

// allowRefusal takes a token for one REFUSED answer. Only serve calls it.
func (s *Server) allowRefusal(now time.Time) bool {
	s.tokens = min(refuseBurst, s.tokens+now.Sub(s.lastRefill).Seconds()*refuseRate)
	s.lastRefill = now
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

// answer builds the response to req from src into out; nil means send
// nothing.
func (s *Server) answer(src netip.Addr, req, out []byte, now time.Time) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		s.malformed.Add(1) // never answer a response: no loops between responders
		return nil
	}
	q, err := p.Question()
	if err != nil {
		s.malformed.Add(1)
		return nil
	}
	if !s.cfg.Local(src) {
		if !s.allowRefusal(now) {
			s.refuseLimited.Add(1)
			return nil
		}
		s.refused.Add(1)
		return s.reply(out, h, q, dnsmessage.RCodeRefused, nil)
	}
	if _, err := p.Question(); !errors.Is(err, dnsmessage.ErrSectionDone) {
		s.malformed.Add(1)
		return s.reply(out, h, q, dnsmessage.RCodeFormatError, nil)
	}
	if h.OpCode != 0 {
		s.notImpl.Add(1)
		return s.reply(out, h, q, dnsmessage.RCodeNotImplemented, nil)
	}
	s.queries.Add(1)
	if q.Class != dnsmessage.ClassINET && q.Class != dnsmessage.ClassANY {
		s.refusedZone.Add(1)
		return s.reply(out, h, q, dnsmessage.RCodeRefused, nil)
	}
	name := strings.ToLower(q.Name.String())
	switch {
	case name == Zone || name == ReverseZone:
		s.noData.Add(1)
		return s.reply(out, h, q, dnsmessage.RCodeSuccess, nil)
	case strings.HasSuffix(name, "."+Zone):
		label := strings.TrimSuffix(name, "."+Zone)
		addr, ok := netip.Addr{}, false
		if !strings.Contains(label, ".") {
			addr, ok = s.cfg.Lookup(label)
		}
		if !ok {
			s.nxdomain.Add(1)
			return s.reply(out, h, q, dnsmessage.RCodeNameError, nil)
		}
		if q.Type != dnsmessage.TypeAAAA && q.Type != dnsmessage.TypeALL {
			s.noData.Add(1)
			return s.reply(out, h, q, dnsmessage.RCodeSuccess, nil)
		}
		s.answered.Add(1)
		return s.reply(out, h, q, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder, rh dnsmessage.ResourceHeader) error {
			rh.Type = dnsmessage.TypeAAAA
			return b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: addr.As16()})
		})
	case strings.HasSuffix(name, "."+ReverseZone):
		addr, ok := parseReverse(name)
		var target string
		if ok {
			target, ok = s.cfg.Reverse(addr)
		}
		if !ok {
			s.nxdomain.Add(1)
			return s.reply(out, h, q, dnsmessage.RCodeNameError, nil)
		}
		if q.Type != dnsmessage.TypePTR && q.Type != dnsmessage.TypeALL {
			s.noData.Add(1)
			return s.reply(out, h, q, dnsmessage.RCodeSuccess, nil)
		}
		ptr, err := dnsmessage.NewName(target + "." + Zone)
		if err != nil {
			s.nxdomain.Add(1)
			return s.reply(out, h, q, dnsmessage.RCodeNameError, nil)
		}
		s.answered.Add(1)
		return s.reply(out, h, q, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder, rh dnsmessage.ResourceHeader) error {
			rh.Type = dnsmessage.TypePTR
			return b.PTRResource(rh, dnsmessage.PTRResource{PTR: ptr})
		})
	}
	s.refusedZone.Add(1)
	return s.reply(out, h, q, dnsmessage.RCodeRefused, nil)
}

var (
	zoneName   = dnsmessage.MustNewName(Zone)
	soaMName   = dnsmessage.MustNewName("ns." + Zone)
	soaRName   = dnsmessage.MustNewName("hostmaster." + Zone)
	negTTL     = uint32(5)
	soaRecords = dnsmessage.SOAResource{NS: soaMName, MBox: soaRName, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, MinTTL: negTTL}
)

// reply writes a response echoing q; answer, if set, adds the one answer
// record. Negative answers of our zones carry the zone's SOA so resolvers
// cache them only briefly.
func (s *Server) reply(out []byte, qh dnsmessage.Header, q dnsmessage.Question, rcode dnsmessage.RCode,
	answer func(*dnsmessage.Builder, dnsmessage.ResourceHeader) error) []byte {
	h := dnsmessage.Header{ID: qh.ID, Response: true, OpCode: qh.OpCode, RecursionDesired: qh.RecursionDesired, RCode: rcode}
	ours := rcode == dnsmessage.RCodeSuccess || rcode == dnsmessage.RCodeNameError
	h.Authoritative = ours
	b := dnsmessage.NewBuilder(out, h)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	if err := b.Question(q); err != nil {
		return nil
	}
	if answer != nil {
		if err := b.StartAnswers(); err != nil {
			return nil
		}
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: uint32(s.cfg.TTL / time.Second)}
		if err := answer(&b, rh); err != nil {
			return nil
		}
	} else if ours {
		if err := b.StartAuthorities(); err != nil {
			return nil
		}
		zone := zoneName
		if strings.HasSuffix(strings.ToLower(q.Name.String()), ReverseZone) {
			zone = dnsmessage.MustNewName(ReverseZone)
		}
		if err := b.SOAResource(dnsmessage.ResourceHeader{Name: zone, Class: dnsmessage.ClassINET, TTL: negTTL}, soaRecords); err != nil {
			return nil
		}
	}
	msg, err := b.Finish()
	if err != nil || len(msg) > maxResponse {
		return nil
	}
	return msg
}

// parseReverse turns the 32 nibble labels of an ip6.arpa name into an
// address in fd00:c0f1::/32.
func parseReverse(name string) (netip.Addr, bool) {
	nibbles := strings.TrimSuffix(name, ".ip6.arpa.")
	if len(nibbles) != 63 {
		return netip.Addr{}, false
	}
	var a [16]byte
	for i := 0; i < 32; i++ {
		c := nibbles[2*i]
		if i < 31 && nibbles[2*i+1] != '.' {
			return netip.Addr{}, false
		}
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		default:
			return netip.Addr{}, false
		}
		pos := 31 - i // the first label is the last nibble
		if pos%2 == 0 {
			a[pos/2] |= v << 4
		} else {
			a[pos/2] |= v
		}
	}
	addr := netip.AddrFrom16(a)
	return addr, overlayPrefix.Contains(addr)
}

// LocalAddrs answers whether an address is this host's: loopback, or
// assigned to one of its interfaces now. The interface list is read again
// at most once a second, when an address is not in the last one read, so
// an address added after start (the TUN's) is found.
type LocalAddrs struct {
	mu    sync.Mutex // guards the fields below
	addrs map[netip.Addr]bool
	read  time.Time
}

// NewLocalAddrs returns an empty set that reads the interfaces on first use.
func NewLocalAddrs() *LocalAddrs { return &LocalAddrs{} }

// Contains reports whether a is this host's.
func (l *LocalAddrs) Contains(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if a.IsLoopback() {
		return true
	}
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs[a] {
		return true
	}
	if time.Since(l.read) < time.Second {
		return false
	}
	l.read = time.Now()
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	l.addrs = make(map[netip.Addr]bool, len(ifaddrs))
	for _, ia := range ifaddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			l.addrs[p.Addr().Unmap()] = true
		}
	}
	return l.addrs[a]
}
