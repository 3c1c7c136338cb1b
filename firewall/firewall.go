// Package firewall is the node's inbound packet filter: it decides, per
// IPv6 packet arriving from a peer, whether the packet may reach the
// device (kernel TUN or netstack). Rules name the sending peer by its
// verified identity or SPIFFE ID, a protocol and a destination port range.
// It is stateful: packets of flows this node started (and of inbound flows
// a rule admitted) are tracked in a bounded table, so replies to our own
// connections pass whatever the rules say.
//
// Outbound packets are never filtered, only tracked. ICMPv6 error messages
// (Packet Too Big among them) that quote a packet we sent to their sender,
// and echo requests, always pass; everything else not admitted by a rule
// or a tracked flow is dropped unless the default is Allow. A packet whose
// source is not its peer's own SmartAddr is dropped whatever the rules say.
// The per-packet path allocates nothing.
//
// SPIFFE patterns match only the SPIFFE IDs the caller vouches for (the
// node passes those of certificates that chain to its CA, with their
// expiry): a self-signed certificate can claim any SPIFFE ID.
//
// It imports pki and smartaddr only; the node's datapath calls it.
package firewall

import (
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// Default is what happens to a new inbound flow no rule admits.
type Default uint8

// Defaults.
const (
	Deny  Default = iota // the default on the open overlay
	Allow                // --inbound-default allow
)

func (d Default) String() string {
	if d == Allow {
		return "allow"
	}
	return "deny"
}

// ParseDefault parses "allow" or "deny".
func ParseDefault(s string) (Default, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny", "drop":
		return Deny, nil
	}
	return Deny, fmt.Errorf("inbound default %q is not allow or deny", s)
}

// Config is a rule set and the flow table's bounds. The zero value denies
// every new inbound flow and tracks flows with the defaults below.
type Config struct {
	Rules   []Rule
	Default Default
	// MaxFlows caps the flow table (default 32,768; 48 bytes each, allocated up front).
	// When a bucket is full its least recently seen flow is evicted.
	MaxFlows int
	// MaxInboundFlowsPerPeer caps the flows one peer may start toward us
	// that the table tracks (default 1,024). Past it the peer's packets
	// are still judged by the rules, just not remembered.
	MaxInboundFlowsPerPeer int
	// Idle timeouts after which a flow is forgotten (defaults: TCP 12 min,
	// UDP 3 min, other protocols and ICMPv6 echo 1 min).
	TCPTimeout, UDPTimeout, OtherTimeout time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if len(c.Rules) > MaxRules {
		return c, fmt.Errorf("firewall: %d rules, at most %d", len(c.Rules), MaxRules)
	}
	if c.MaxFlows <= 0 {
		c.MaxFlows = 32768
	}
	if c.MaxInboundFlowsPerPeer <= 0 {
		c.MaxInboundFlowsPerPeer = 1024
	}
	if c.TCPTimeout <= 0 {
		c.TCPTimeout = 12 * time.Minute
	}
	if c.UDPTimeout <= 0 {
		c.UDPTimeout = 3 * time.Minute
	}
	if c.OtherTimeout <= 0 {
		c.OtherTimeout = time.Minute
	}
	for i := range c.Rules {
		if c.Rules[i].From == "" {
			return c, fmt.Errorf("firewall: rule %d has no FROM (build rules with ParseRule)", i+1)
		}
	}
	return c, nil
}

// Verdict is the outcome for one inbound packet.
type Verdict uint8

// Verdicts. Pass* let the packet through; Drop* are counted by reason.
const (
	PassFlow       Verdict = iota // a tracked flow (ours, or admitted earlier)
	PassRule                      // a rule admits it
	PassDefault                   // no rule, but the default is Allow
	PassICMP                      // ICMPv6 error message or echo request
	DropNoRule                    // a new inbound flow no rule admits
	DropFragment                  // a later fragment of a flow we cannot tell
	DropMalformed                 // headers shorter than they claim
	DropSpoofed                   // the source is not the peer's own address
	DropICMPForged                // an ICMPv6 error quoting a packet we did not send to its sender
	numVerdicts
)

// Pass reports whether v lets the packet through.
func (v Verdict) Pass() bool { return v < DropNoRule }

var verdictNames = [numVerdicts]string{"flow", "rule", "default", "icmp", "no_rule", "fragment", "malformed", "spoofed", "icmp_forged"}

func (v Verdict) String() string {
	if v < numVerdicts {
		return verdictNames[v]
	}
	return "verdict?"
}

// Firewall filters inbound packets for any number of peers. Its methods are
// safe for concurrent use; Inbound and Outbound allocate nothing.
type Firewall struct {
	set      atomic.Pointer[ruleSet] // replaced whole by Reload
	reloadMu sync.Mutex              // one Reload at a time
	flows    table

	passed  [numVerdicts]atomic.Uint64
	evicted atomic.Uint64 // live flows pushed out of a full bucket
	untrack atomic.Uint64 // admitted inbound flows not tracked: the peer's cap

	dropMu  sync.Mutex // guards drops and dropN; TryLock'd on the hot path
	drops   [MaxRecentDrops]Drop
	dropN   uint64
	dropped atomic.Uint64 // drops not recorded because the ring was busy
}

// ruleSet is one immutable generation of configuration.
type ruleSet struct {
	cfg Config
	gen uint64
}

// New returns a firewall with cfg.
func New(cfg Config) (*Firewall, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	f := &Firewall{}
	f.flows.init(c.MaxFlows)
	f.set.Store(&ruleSet{cfg: c, gen: 1})
	return f, nil
}

// Reload replaces the rules and the default at now (unix ns). Tracked
// flows survive: flows this node started keep passing, and flows a peer
// started survive while the new rules still admit them; the others are
// forgotten now (their next packet is judged as a new flow) and counted in
// dropped. The flow table keeps its size; the other bounds and timeouts
// change.
func (f *Firewall) Reload(cfg Config, now int64) (dropped int, err error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return 0, err
	}
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	old := f.set.Load()
	c.MaxFlows = old.cfg.MaxFlows
	s := &ruleSet{cfg: c, gen: old.gen + 1}
	f.set.Store(s)
	if c.Default == Allow {
		return 0, nil
	}
	return f.flows.removeIf(now, func(e *entry) bool {
		h := headers{proto: e.k.proto, dst: e.k.local, src: e.k.remote, ports: true}
		return !f.rules(s, e.owner, now).admits(&h)
	}), nil
}

// Rules returns the rules in force and the default.
func (f *Firewall) Rules() ([]Rule, Default) {
	s := f.set.Load()
	return append([]Rule(nil), s.cfg.Rules...), s.cfg.Default
}

// Peer is one connected peer as the firewall sees it: its verified identity
// and SPIFFE ID, and the rules that apply to it, compiled on first use
// after each Reload. Make one per connection with NewPeer.
type Peer struct {
	id   pki.Identity
	addr [16]byte // its SmartAddr: the only source its packets may have
	// spiffe is the SPIFFE ID of its verified certificate (nil or "": none).
	// The caller may replace it (a renewed certificate naming another
	// workload): the rules are compiled again at the next packet.
	spiffe   *atomic.Pointer[string]
	expiry   *atomic.Int64 // unix ns after which the SPIFFE ID no longer counts; nil: never
	compiled atomic.Pointer[peerRules]
	inbound  atomic.Int32 // tracked flows this peer started
}

// NewPeer returns the handle for a peer with identity id and the SPIFFE ID
// of its verified certificate ("" when it has none).
func (f *Firewall) NewPeer(id pki.Identity, spiffeID string) *Peer {
	var sid atomic.Pointer[string]
	if spiffeID != "" {
		sid.Store(&spiffeID)
	}
	return f.NewPeerVouched(id, &sid, nil)
}

// NewPeerVouched is NewPeer for a SPIFFE ID that the caller keeps, in
// spiffe, and that counts only until the unix-ns time in expiry (nil:
// never). The caller may change both later: a renewed certificate pushes
// expiry, or names another workload in spiffe (nil there: none). Rules
// naming SPIFFE patterns then stop admitting the peer, and the flows they
// admitted, at its next packet (expiry: once it passes).
func (f *Firewall) NewPeerVouched(id pki.Identity, spiffe *atomic.Pointer[string], expiry *atomic.Int64) *Peer {
	if spiffe == nil {
		spiffe = new(atomic.Pointer[string])
	}
	return &Peer{id: id, addr: smartaddr.FromIdentity(id).As16(), spiffe: spiffe, expiry: expiry}
}

// Identity returns the peer's identity.
func (p *Peer) Identity() pki.Identity { return p.id }

// peerRules is the part of one rule set that applies to one peer: merged,
// sorted port intervals per protocol.
type peerRules struct {
	gen      uint64
	recheck  int64      // unix ns: compile again from then on (the SPIFFE ID expires, or may have been renewed)
	sid      *string    // the peer's SPIFFE ID when compiled: compile again when it changes
	allowAll bool       // a rule admits any protocol from this peer
	tcp, udp []interval // sorted, disjoint
	icmp     bool
}

type interval struct{ lo, hi uint16 }

func (s *ruleSet) compile(p *Peer, now int64) *peerRules {
	pr := &peerRules{gen: s.gen, recheck: math.MaxInt64, sid: p.spiffe.Load()}
	var spiffeID string
	if pr.sid != nil {
		spiffeID = *pr.sid
	}
	if spiffeID != "" && p.expiry != nil {
		if until := p.expiry.Load(); now < until {
			pr.recheck = until
		} else {
			spiffeID = ""                         // expired: the pattern rules do not apply
			pr.recheck = now + int64(time.Second) // until a renewal pushes expiry
		}
	}
	for i := range s.cfg.Rules {
		r := &s.cfg.Rules[i]
		if !r.matchesPeer(p.id, spiffeID) {
			continue
		}
		lo, hi := r.PortLo, r.PortHi
		if lo == 0 {
			lo, hi = 1, 65535
		}
		switch r.Proto {
		case ProtoAny:
			pr.allowAll = true
		case ProtoTCP:
			pr.tcp = append(pr.tcp, interval{lo, hi})
		case ProtoUDP:
			pr.udp = append(pr.udp, interval{lo, hi})
		case ProtoICMP:
			pr.icmp = true
		}
	}
	pr.tcp, pr.udp = merge(pr.tcp), merge(pr.udp)
	return pr
}

func merge(iv []interval) []interval {
	if len(iv) < 2 {
		return iv
	}
	sort.Slice(iv, func(i, j int) bool { return iv[i].lo < iv[j].lo })
	out := iv[:1]
	for _, x := range iv[1:] {
		last := &out[len(out)-1]
		if uint32(x.lo) <= uint32(last.hi)+1 {
			last.hi = max(last.hi, x.hi)
			continue
		}
		out = append(out, x)
	}
	return out
}

func contains(iv []interval, port uint16) bool {
	i := sort.Search(len(iv), func(i int) bool { return iv[i].hi >= port })
	return i < len(iv) && iv[i].lo <= port
}

func (pr *peerRules) admits(h *headers) bool {
	if pr.allowAll {
		return true
	}
	switch h.proto {
	case 6:
		return h.ports && contains(pr.tcp, h.dst)
	case 17:
		return h.ports && contains(pr.udp, h.dst)
	case 58:
		return pr.icmp
	}
	return false
}

// rules returns p's compiled rules for the current generation at now.
func (f *Firewall) rules(s *ruleSet, p *Peer, now int64) *peerRules {
	pr := p.compiled.Load()
	if pr == nil || pr.gen != s.gen || now >= pr.recheck || p.spiffe.Load() != pr.sid {
		pr = s.compile(p, now) // allocates, once per peer per Reload (or expiry, or new SPIFFE ID)
		p.compiled.Store(pr)
	}
	return pr
}

func (s *ruleSet) timeout(proto uint8) int64 {
	switch proto {
	case 6:
		return int64(s.cfg.TCPTimeout)
	case 17:
		return int64(s.cfg.UDPTimeout)
	}
	return int64(s.cfg.OtherTimeout)
}

// Inbound judges pkt, an IPv6 packet that peer p sent us (the caller has
// checked that its source is p's SmartAddr and its destination ours), at
// now (unix nanoseconds).
func (f *Firewall) Inbound(p *Peer, pkt []byte, now int64) Verdict {
	v := f.inbound(p, pkt, now)
	f.passed[v].Add(1)
	if !v.Pass() {
		f.recordDrop(p.id, pkt, v, now)
	}
	return v
}

func (f *Firewall) inbound(p *Peer, pkt []byte, now int64) Verdict {
	h, ok := parse(pkt)
	if !ok {
		return DropMalformed
	}
	if [16]byte(pkt[8:24]) != p.addr {
		return DropSpoofed
	}
	s := f.set.Load()
	if h.proto == 58 {
		switch {
		case h.icmp == icmpEchoRequest:
			return PassICMP
		case h.icmp <= icmpErrorMax && errorAboutUs(pkt, &h):
			return PassICMP
		case h.icmp <= icmpErrorMax:
			return DropICMPForged
		}
	}
	if h.laterFr {
		if s.cfg.Default == Allow {
			return PassDefault
		}
		return DropFragment
	}
	var k key
	if h.ports {
		k = makeKey(pkt[8:24], h.proto, h.dst, h.src)
		switch f.flows.lookup(&k, now, s.timeout(h.proto)) {
		case byUs:
			return PassFlow
		case byPeer:
			// Admitted earlier: still admitted by today's rules?
			if s.cfg.Default == Allow || f.rules(s, p, now).admits(&h) {
				return PassFlow
			}
			f.flows.remove(&k)
			return DropNoRule
		}
	}
	var v Verdict
	switch {
	case f.rules(s, p, now).admits(&h):
		v = PassRule
	case s.cfg.Default == Allow:
		v = PassDefault
	default:
		return DropNoRule
	}
	if h.ports {
		if p.inbound.Load() >= int32(s.cfg.MaxInboundFlowsPerPeer) {
			f.untrack.Add(1)
		} else if f.flows.insert(&k, p, now, s.timeout(h.proto)) {
			f.evicted.Add(1)
		}
	}
	return v
}

// Outbound tracks pkt, an IPv6 packet this node sends to a peer, so that
// the peer's replies pass Inbound. It never blocks a packet.
func (f *Firewall) Outbound(pkt []byte, now int64) {
	h, ok := parse(pkt)
	if !ok || !h.ports || h.laterFr || h.proto == 58 && h.icmp == icmpEchoReply {
		return // our echo replies answer their requests; nothing to track
	}
	s := f.set.Load()
	// The key is from the peer's side of the table: its address, our
	// port as local, its port as remote.
	k := makeKey(pkt[24:40], h.proto, h.src, h.dst)
	if f.flows.touchOrInsert(&k, now, s.timeout(h.proto)) {
		f.evicted.Add(1)
	}
}

// Stats counts verdicts and flow-table events.
type Stats struct {
	Passed    map[string]uint64 `json:"passed"`  // by reason: flow, rule, default, icmp
	Dropped   map[string]uint64 `json:"dropped"` // by reason: no_rule, fragment, malformed
	Flows     int               `json:"flows"`   // tracked now (expired ones not yet reclaimed included)
	MaxFlows  int               `json:"max_flows"`
	Evicted   uint64            `json:"flows_evicted"`
	Untracked uint64            `json:"flows_untracked_peer_cap"`
	// RecentSkipped counts drops left out of RecentDrops while a flood
	// kept its ring busy (the counters above have them all).
	RecentSkipped uint64 `json:"recent_drops_skipped"`
	Default       string `json:"inbound_default"`
	Rules         int    `json:"rules"`
	RecentDrops   []Drop `json:"recent_drops"`
}

// Stats returns a snapshot.
func (f *Firewall) Stats() Stats {
	s := f.set.Load()
	st := Stats{
		Passed: map[string]uint64{}, Dropped: map[string]uint64{},
		Flows: f.flows.count(), MaxFlows: f.flows.capacity(),
		Evicted: f.evicted.Load(), Untracked: f.untrack.Load(), RecentSkipped: f.dropped.Load(),
		Default: s.cfg.Default.String(), Rules: len(s.cfg.Rules),
		RecentDrops: f.RecentDrops(),
	}
	for v := Verdict(0); v < numVerdicts; v++ {
		if v.Pass() {
			st.Passed[v.String()] = f.passed[v].Load()
		} else {
			st.Dropped[v.String()] = f.passed[v].Load()
		}
	}
	return st
}

// Dropped returns how many packets were dropped for reason v.
func (f *Firewall) Dropped(v Verdict) uint64 {
	if v >= numVerdicts {
		return 0
	}
	return f.passed[v].Load()
}

// ---- recent drops ------------------------------------------------------

// MaxRecentDrops is how many dropped flows Stats remembers.
const MaxRecentDrops = 16

// Drop is one dropped inbound flow, for a user asking why a connection
// does not work. Repeats of the newest entry only raise its Count.
type Drop struct {
	Peer   pki.Identity `json:"peer"`
	Proto  string       `json:"proto"`
	Port   uint16       `json:"port,omitempty"`
	Reason string       `json:"reason"`
	Count  uint64       `json:"count"`
	Last   time.Time    `json:"last"`

	proto  uint8
	reason Verdict
	at     int64
}

func (f *Firewall) recordDrop(id pki.Identity, pkt []byte, v Verdict, now int64) {
	if !f.dropMu.TryLock() {
		f.dropped.Add(1) // a flood: the counters have it, the ring need not
		return
	}
	defer f.dropMu.Unlock()
	h, _ := parse(pkt)
	port := uint16(0)
	if h.ports && h.proto != 58 {
		port = h.dst
	}
	if f.dropN > 0 {
		d := &f.drops[(f.dropN-1)%MaxRecentDrops]
		if d.Peer == id && d.proto == h.proto && d.Port == port && d.reason == v {
			d.Count++
			d.at = now
			return
		}
	}
	f.drops[f.dropN%MaxRecentDrops] = Drop{Peer: id, Port: port, Count: 1, proto: h.proto, reason: v, at: now}
	f.dropN++
}

// RecentDrops returns the newest dropped flows, newest first.
func (f *Firewall) RecentDrops() []Drop {
	f.dropMu.Lock()
	defer f.dropMu.Unlock()
	n := min(f.dropN, MaxRecentDrops)
	out := make([]Drop, 0, n)
	for i := uint64(0); i < n; i++ {
		d := f.drops[(f.dropN-1-i)%MaxRecentDrops]
		d.Proto, d.Reason, d.Last = Proto(d.proto).String(), d.reason.String(), time.Unix(0, d.at)
		out = append(out, d)
	}
	return out
}

// ParseRules parses each rule with ParseRule, naming the failing one.
func ParseRules(ss []string) ([]Rule, error) {
	if len(ss) > MaxRules {
		return nil, fmt.Errorf("%w: %d rules, at most %d", ErrBadRule, len(ss), MaxRules)
	}
	out := make([]Rule, 0, len(ss))
	for _, s := range ss {
		r, err := ParseRule(s)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}
