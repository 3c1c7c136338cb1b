package gossipsub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/korium/korium-tun/internal/ratelimit"
	"github.com/korium/korium-tun/pki"
)

// Sender carries encoded RPCs to peers. The router calls Send from one
// goroutine per peer, never from its loop, so Send may block for flow
// control; it should return when ctx ends. The host guarantees that bytes
// given to HandleRPC really come from the identity it names (QUIC with
// mutual TLS does).
type Sender interface {
	Send(ctx context.Context, to pki.Identity, rpc []byte) error
}

// Message is a message received on a subscription. From is the publisher,
// whose signature was verified.
type Message struct {
	Topic        string
	Data         []byte
	From         pki.Identity
	Seqno        uint64
	Published    time.Time    // publish time, signed by From (millisecond precision)
	ReceivedFrom pki.Identity // the neighbour that forwarded it
}

// Signal is a relay signal delivered to this node. From is the verified
// originator.
type Signal struct {
	From    pki.Identity
	Payload []byte
}

// PeerInfo describes a peer known in a topic.
type PeerInfo struct {
	ID       pki.Identity
	Addr     netip.Addr
	Outbound bool
	InMesh   bool
	Score    float64
}

// Errors returned by the API.
var (
	ErrClosed          = errors.New("gossipsub: router closed")
	ErrBadTopic        = errors.New("gossipsub: topic must have 1..255 bytes")
	ErrTooLargeMessage = errors.New("gossipsub: message too large")
	ErrRateLimited     = errors.New("gossipsub: publish rate exceeded")
	ErrSubscribed      = errors.New("gossipsub: already subscribed")
	ErrNotSubscribed   = errors.New("gossipsub: not subscribed")
	ErrTooManyTopics   = errors.New("gossipsub: too many topics")
)

// Router is a GossipSub router. Create it with New, feed it with AddPeer,
// RemovePeer and HandleRPC, and stop it with Close.
type Router struct {
	cfg    Config
	key    Signer
	self   pki.Identity
	sender Sender
	log    *slog.Logger

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	reqs    chan func()
	inbox   *inbox
	signals chan Signal
	stats   counters
	once    sync.Once

	// Everything below is owned by the loop goroutine.
	rng       *rand.Rand
	peers     map[pki.Identity]*peer
	topics    map[string]map[pki.Identity]struct{} // peers subscribed to each topic
	mesh      map[string]map[pki.Identity]struct{} // our subscriptions and their meshes
	fanout    map[string]map[pki.Identity]struct{}
	lastPub   map[string]time.Time
	subs      map[string]*Subscription
	backoff   map[string]map[pki.Identity]*backoffEntry
	scores    map[pki.Identity]*peerScore // connected and retained
	ipCount   map[netip.Prefix]int
	mcache    *msgCache
	seen      *seenCache
	promises  map[MsgID]map[pki.Identity]time.Time
	relaySeen *fifoSet[MsgID] // relayKey of signals seen, with their times
	// relayFloor is the latest time of a signal evicted from relaySeen:
	// a signal not in relaySeen is refused unless sent after it (the
	// seenCache rule, for the same reason).
	relayFloor uint64
	seqno      uint64
	pubBucket  ratelimit.Limiter
	tick       uint64
	lastDecay  time.Time
	sigBuf     []byte // scratch for verifying received messages
}

type peer struct {
	id         pki.Identity
	addr       netip.Addr
	prefix     netip.Prefix
	outbound   bool
	topics     map[string]struct{}
	out        *sendQueue
	recv       ratelimit.Limiter
	relay      ratelimit.Limiter
	ihaves     int  // IHAVE entries received this heartbeat
	asked      int  // IDs we asked this peer for this heartbeat
	graylisted bool // as last looked at (noteGraylist), for logging transitions
	// dwN is dontWant's size, read and written by the loop only (the
	// loop is dontWant's only writer), beside the fields the heartbeat
	// touches anyway: it skips a peer with nothing to expire without the
	// lock or a cache miss on the set (4% of the 1,000-node churn
	// simulation's CPU went to loading empty sets).
	dwN int
	// score is the peer's entry of Router.scores, held while it is
	// connected (only a disconnected peer's entry is ever dropped).
	score *peerScore
	// hbScore is the peer's score as heartbeat hbTick computed it, kept
	// for the rest of that heartbeat.
	hbTick  uint64
	hbScore float64

	// dwMu guards dontWant: the loop adds, the writer checks before sending
	// a queued message, so an IDONTWANT also stops copies already queued.
	dwMu     sync.Mutex
	dontWant *fifoSet[MsgID]
}

func (p *peer) dontWantHas(id MsgID) bool {
	p.dwMu.Lock()
	defer p.dwMu.Unlock()
	return p.dontWant.has(id)
}

// dontWantAdd remembers an IDONTWANT. Loop only.
func (p *peer) dontWantAdd(id MsgID, tick uint64) (evicted bool) {
	p.dwMu.Lock()
	defer p.dwMu.Unlock()
	_, evicted = p.dontWant.add(id, tick)
	p.dwN = p.dontWant.len()
	return evicted
}

// dontWantExpire forgets IDONTWANTs older than minTick. Loop only.
func (p *peer) dontWantExpire(minTick uint64) {
	if p.dwN == 0 {
		return
	}
	p.dwMu.Lock()
	p.dontWant.expire(minTick)
	p.dwN = p.dontWant.len()
	p.dwMu.Unlock()
}

type backoffEntry struct {
	until  time.Time
	pruned time.Time // when we last pruned (graft flood window, prune streak)
	count  int       // prunes in a row, for the exponential backoff
}

type peerScore struct {
	stats    PeerStats
	grafted  map[string]time.Time
	app      float64
	retainTo time.Time // zero while connected
}

// New starts a router that signs with key and sends through sender. log may
// be nil.
func New(cfg Config, key Signer, sender Sender, log *slog.Logger) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if key == nil || sender == nil {
		return nil, errors.New("gossipsub: New needs a key and a sender")
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	now := time.Now()
	self := key.Identity()
	r := &Router{
		cfg: cfg, key: key, self: self, sender: sender, log: log.With("pkg", "gossipsub"),
		ctx: ctx, cancel: cancel,
		reqs:      make(chan func()),
		inbox:     newInbox(cfg.PeerRecvQueue, cfg.PeerRecvBytes, cfg.MaxScoredPeers),
		signals:   make(chan Signal, cfg.SignalQueue),
		rng:       rand.New(rand.NewPCG(uint64(now.UnixNano()), uint64(self[0])<<8|uint64(self[1]))),
		peers:     make(map[pki.Identity]*peer),
		topics:    make(map[string]map[pki.Identity]struct{}),
		mesh:      make(map[string]map[pki.Identity]struct{}),
		fanout:    make(map[string]map[pki.Identity]struct{}),
		lastPub:   make(map[string]time.Time),
		subs:      make(map[string]*Subscription),
		backoff:   make(map[string]map[pki.Identity]*backoffEntry),
		scores:    make(map[pki.Identity]*peerScore),
		ipCount:   make(map[netip.Prefix]int),
		mcache:    newMsgCache(cfg.HistoryLength, cfg.HistoryGossip),
		seen:      newSeenCache(cfg.MaxSeenSources),
		promises:  make(map[MsgID]map[pki.Identity]time.Time),
		relaySeen: newFIFOSet[MsgID](cfg.RelaySeen),
		seqno:     uint64(now.UnixNano()),
		pubBucket: newBucket(cfg.PublishRate, int(cfg.PublishRate)),
		lastDecay: now,
	}
	r.wg.Add(1)
	go r.loop()
	return r, nil
}

// Identity returns the router's own identity.
func (r *Router) Identity() pki.Identity { return r.self }

// Close stops the router and waits for its goroutines. Subscriptions and
// the signal channel are closed. It is idempotent.
func (r *Router) Close() error {
	r.once.Do(func() {
		r.cancel()
	})
	r.wg.Wait()
	return nil
}

// do runs f on the loop and waits for it.
func (r *Router) do(f func()) error {
	done := make(chan struct{})
	select {
	case r.reqs <- func() { f(); close(done) }:
	case <-r.ctx.Done():
		return ErrClosed
	}
	// The loop runs an accepted f to completion before it looks at ctx.
	<-done
	return nil
}

// Stats returns a snapshot of the counters.
func (r *Router) Stats() Stats { return r.stats.snapshot() }

// Signals returns the channel of relay signals addressed to this node. It is
// bounded (Config.SignalQueue, oldest dropped) and closed by Close.
func (r *Router) Signals() <-chan Signal { return r.signals }

// HandleRPC hands the router bytes received from a peer. It never blocks:
// each peer has a bounded queue whose oldest RPC is dropped when full. The
// router keeps data until it is decoded: the caller must not reuse it.
func (r *Router) HandleRPC(from pki.Identity, data []byte) {
	if r.ctx.Err() != nil {
		return
	}
	switch r.inbox.put(from, data) {
	case inboxDroppedOldest:
		r.stats.DropRecvQueue.Add(1)
	case inboxRejected:
		r.stats.DropUnknownPeer.Add(1)
	}
}

// AddPeer tells the router a connection to id exists; outbound reports
// whether we dialed it (D_out), addr is its IP (P6). Calling it again updates
// the address and direction.
func (r *Router) AddPeer(id pki.Identity, addr netip.Addr, outbound bool) {
	r.do(func() { r.addPeer(id, addr, outbound) })
}

// RemovePeer tells the router the connection to id is gone.
func (r *Router) RemovePeer(id pki.Identity) {
	r.do(func() { r.removePeer(id) })
}

// SetAppScore sets the application-specific score (P5) of a peer.
func (r *Router) SetAppScore(id pki.Identity, v float64) {
	r.do(func() {
		if s := r.scores[id]; s != nil {
			s.app = v
		}
	})
}

// Score returns the current score of a peer (connected or retained).
func (r *Router) Score(id pki.Identity) (score float64, ok bool) {
	r.do(func() {
		if _, ok = r.scores[id]; ok {
			score = r.score(id)
		}
	})
	return score, ok
}

// TopicPeers lists the peers known to subscribe to topic, with their scores
// and whether they are in our mesh.
func (r *Router) TopicPeers(topic string) []PeerInfo {
	var out []PeerInfo
	r.do(func() {
		m := r.mesh[topic]
		for id := range r.topics[topic] {
			p := r.peers[id]
			_, in := m[id]
			out = append(out, PeerInfo{ID: id, Addr: p.addr, Outbound: p.outbound, InMesh: in, Score: r.score(id)})
		}
	})
	return out
}

// Topics lists the topics we subscribe to.
func (r *Router) Topics() []string {
	var out []string
	r.do(func() {
		for t := range r.mesh {
			out = append(out, t)
		}
	})
	return out
}

// Subscription receives the messages of one topic.
type Subscription struct {
	topic string
	ch    chan Message
}

// Topic returns the subscribed topic.
func (s *Subscription) Topic() string { return s.topic }

// Messages returns the channel of received messages. It is bounded
// (Config.SubscriptionSize, oldest dropped and counted) and closed by
// Unsubscribe or Close.
func (s *Subscription) Messages() <-chan Message { return s.ch }

// Subscribe joins topic: announces it to all peers and builds a mesh.
func (r *Router) Subscribe(topic string) (*Subscription, error) {
	if !validTopic(topic) {
		return nil, ErrBadTopic
	}
	var sub *Subscription
	var err error
	if e := r.do(func() { sub, err = r.subscribe(topic) }); e != nil {
		return nil, e
	}
	return sub, err
}

// Unsubscribe leaves topic and closes its subscription channel.
func (r *Router) Unsubscribe(topic string) error {
	var err error
	if e := r.do(func() { err = r.unsubscribe(topic) }); e != nil {
		return e
	}
	return err
}

// Publish signs data and sends it to topic: to every topic peer above the
// publish threshold (flood publishing), or with Config.DisableFloodPublish
// to our mesh (fanout) peers. We need not subscribe to topic.
func (r *Router) Publish(topic string, data []byte) error {
	if !validTopic(topic) {
		return ErrBadTopic
	}
	if len(data) > r.cfg.MaxMessageSize {
		return fmt.Errorf("%w: %d bytes > %d", ErrTooLargeMessage, len(data), r.cfg.MaxMessageSize)
	}
	data = append([]byte(nil), data...)
	var err error
	if e := r.do(func() { err = r.publish(topic, data) }); e != nil {
		return e
	}
	return err
}

// SendSignal sends an opaque payload to target through the mesh: directly
// if target is a neighbour, else to our mesh peers, who pass it on for at
// most Config.RelayMaxHops hops.
func (r *Router) SendSignal(target pki.Identity, payload []byte) error {
	if len(payload) > r.cfg.Limits.MaxRelayPayload {
		return fmt.Errorf("%w: relay payload %d bytes > %d", ErrTooLargeMessage, len(payload), r.cfg.Limits.MaxRelayPayload)
	}
	payload = append([]byte(nil), payload...)
	return r.do(func() {
		s := RelaySignal{Target: target, Nonce: r.rng.Uint64(), Timestamp: unixMilli(time.Now()), Hops: r.cfg.RelayMaxHops, Payload: payload}
		SignRelaySignal(r.key, &s)
		r.relaySeenAdd(relayKey(&s), s.Timestamp)
		r.stats.RelayOriginated.Add(1)
		r.routeSignal(&s, pki.Identity{}, false)
	})
}

// ---- the loop ----

func (r *Router) loop() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.HeartbeatInterval)
	defer t.Stop()
	defer r.shutdown()
	for {
		select {
		case <-r.ctx.Done():
			return
		case f := <-r.reqs:
			f()
		case <-r.inbox.notify:
			// Serve a bounded batch, then let timers and API calls in.
			for i := 0; i < 256; i++ {
				from, b, ok, more := r.inbox.take()
				if !ok {
					break
				}
				r.handleRPC(from, b)
				if !more {
					break
				}
				if i == 255 {
					select {
					case r.inbox.notify <- struct{}{}:
					default:
					}
				}
			}
		case <-t.C:
			r.heartbeat()
		}
	}
}

func (r *Router) shutdown() {
	for _, p := range r.peers {
		p.out.close()
	}
	for _, s := range r.subs {
		close(s.ch)
	}
	r.subs = nil
	close(r.signals)
}

// writer hands p's queued RPCs to the Sender until the queue is empty or
// closed; queue starts it (see sendQueue).
func (r *Router) writer(p *peer) {
	defer r.wg.Done()
	for {
		it, ok := p.out.pop()
		if !ok {
			return
		}
		b := it.b
		if it.hasID && p.dontWantHas(it.id) {
			r.stats.IDontWantHonored.Add(1)
			continue
		}
		if err := r.sender.Send(r.ctx, p.id, b); err != nil {
			if r.ctx.Err() != nil {
				return
			}
			r.stats.DropSendError.Add(1)
			continue
		}
		r.stats.RPCsSent.Add(1)
		r.stats.BytesSent.Add(uint64(len(b)))
	}
}

func (r *Router) addPeer(id pki.Identity, addr netip.Addr, outbound bool) {
	if id == r.self {
		return
	}
	if p := r.peers[id]; p != nil {
		r.setAddr(p, addr)
		p.outbound = outbound
		return
	}
	p := &peer{
		id: id, outbound: outbound,
		topics:   make(map[string]struct{}),
		out:      newSendQueue(r.cfg.PeerSendQueue, r.cfg.PeerSendBytes),
		recv:     newBucket(r.cfg.ReceiveRate, r.cfg.ReceiveBurst),
		relay:    newBucket(r.cfg.RelayRate, int(r.cfg.RelayRate)+1),
		dontWant: newFIFOSet[MsgID](r.cfg.MaxIDontWantPeer),
	}
	r.setAddr(p, addr)
	r.peers[id] = p
	if s := r.scores[id]; s != nil {
		s.retainTo = time.Time{}
		p.score = s
	} else {
		r.evictRetainedScores()
		p.score = &peerScore{stats: PeerStats{Topics: make(map[string]*TopicStats)}, grafted: make(map[string]time.Time)}
		r.scores[id] = p.score
	}
	r.log.Debug("peer added", "peer", id.Short(), "addr", addr, "outbound", outbound)
	if len(r.mesh) > 0 {
		var rpc RPC
		for t := range r.mesh {
			rpc.Subs = append(rpc.Subs, SubOpt{Subscribe: true, Topic: t})
			if len(rpc.Subs) == r.cfg.Limits.MaxSubs {
				r.sendRPC(p, &rpc, false)
				rpc = RPC{}
			}
		}
		r.sendRPC(p, &rpc, false)
	}
}

func (r *Router) setAddr(p *peer, addr netip.Addr) {
	if p.prefix.IsValid() {
		if r.ipCount[p.prefix]--; r.ipCount[p.prefix] <= 0 {
			delete(r.ipCount, p.prefix)
		}
	}
	p.addr = addr
	p.prefix = colocationPrefix(&r.cfg.Score, addr)
	if p.prefix.IsValid() {
		r.ipCount[p.prefix]++
	}
}

func (r *Router) removePeer(id pki.Identity) {
	p := r.peers[id]
	if p == nil {
		return
	}
	for t := range p.topics {
		r.delTopicPeer(t, id)
	}
	for t, m := range r.mesh {
		if _, ok := m[id]; ok {
			r.leaveMesh(t, id)
		}
	}
	for _, m := range r.fanout {
		delete(m, id)
	}
	p.out.close()
	r.inbox.drop(id)
	r.setAddr(p, netip.Addr{})
	delete(r.peers, id)
	r.log.Debug("peer removed", "peer", id.Short())
	if s := r.scores[id]; s != nil {
		s.retainTo = time.Now().Add(r.cfg.Score.RetainScore)
	}
}

// evictRetainedScores makes room for one more scored peer by forgetting the
// retained score that expires first.
func (r *Router) evictRetainedScores() {
	if len(r.scores) < r.cfg.MaxScoredPeers {
		return
	}
	var victim pki.Identity
	var first time.Time
	for id, s := range r.scores {
		if !s.retainTo.IsZero() && (first.IsZero() || s.retainTo.Before(first)) {
			victim, first = id, s.retainTo
		}
	}
	if !first.IsZero() {
		delete(r.scores, victim)
	}
}

func (r *Router) delTopicPeer(topic string, id pki.Identity) {
	if m := r.topics[topic]; m != nil {
		delete(m, id)
		if len(m) == 0 {
			delete(r.topics, topic)
		}
	}
	if p := r.peers[id]; p != nil {
		delete(p.topics, topic)
	}
}

// score computes a peer's current score.
func (r *Router) score(id pki.Identity) float64 { return r.scoreAt(id, time.Now()) }

// scoreAt is score with the clock read once by the caller (the heartbeat
// scores many peers: a clock read each was a seventh of its time).
func (r *Router) scoreAt(id pki.Identity, now time.Time) float64 {
	if p := r.peers[id]; p != nil {
		return r.scoreOf(p, now)
	}
	return r.compute(r.scores[id], netip.Prefix{}, now) // a retained score, or none
}

// scoreOf is a connected peer's score: the peer at hand, no lookup.
func (r *Router) scoreOf(p *peer, now time.Time) float64 { return r.compute(p.score, p.prefix, now) }

// compute is the score of s for a peer whose colocation prefix is prefix
// (none for a peer no longer connected).
func (r *Router) compute(s *peerScore, prefix netip.Prefix, now time.Time) float64 {
	if s == nil {
		return 0
	}
	for t, ts := range s.stats.Topics {
		if g, ok := s.grafted[t]; ok && ts.InMesh {
			ts.MeshTime = now.Sub(g)
		}
	}
	s.stats.AppScore = s.app
	s.stats.IPColocated = 0
	if prefix.IsValid() {
		s.stats.IPColocated = r.ipCount[prefix]
	}
	return ComputeScore(&r.cfg.Score, &s.stats)
}

// noteGraylist reports whether score v graylists peer p (nil: a peer no
// longer connected), and logs when that changed since the last time it
// was looked at (each RPC from the peer, and the heartbeat's look at its
// mesh and gossip peers): a transition is logged, never every message.
// The caller has p at hand: no lookup per RPC.
func (r *Router) noteGraylist(p *peer, v float64) bool {
	gl := v < r.cfg.Score.GraylistThreshold
	if p != nil && gl != p.graylisted {
		p.graylisted = gl
		r.log.Info("peer graylist changed", "peer", p.id.Short(), "graylisted", gl, "score", v)
	}
	return gl
}

func (r *Router) penalize(id pki.Identity, n float64) {
	if s := r.scores[id]; s != nil {
		s.stats.BehaviourPenalty += n
		r.stats.BehaviourPenalties.Add(uint64(n))
	}
}

// topicStats returns the counters of id in a topic we subscribe to, or nil.
func (r *Router) topicStats(id pki.Identity, topic string) *TopicStats {
	if _, ok := r.mesh[topic]; !ok {
		return nil
	}
	s := r.scores[id]
	if s == nil {
		return nil
	}
	ts := s.stats.Topics[topic]
	if ts == nil {
		ts = &TopicStats{}
		s.stats.Topics[topic] = ts
	}
	return ts
}

func (r *Router) joinMesh(topic string, id pki.Identity) {
	r.mesh[topic][id] = struct{}{}
	if ts := r.topicStats(id, topic); ts != nil {
		ts.InMesh = true
		ts.MeshTime = 0
		ts.MeshMessageDeliveriesActive = false
		r.scores[id].grafted[topic] = time.Now()
	}
}

func (r *Router) leaveMesh(topic string, id pki.Identity) {
	delete(r.mesh[topic], id)
	if s := r.scores[id]; s != nil {
		if ts := s.stats.Topics[topic]; ts != nil {
			p := &r.cfg.Score.Topic
			if ts.MeshMessageDeliveriesActive && ts.MeshMessageDeliveries < p.MeshMessageDeliveriesThreshold {
				d := p.MeshMessageDeliveriesThreshold - ts.MeshMessageDeliveries
				ts.MeshFailurePenalty += d * d
			}
			ts.InMesh = false
			ts.MeshMessageDeliveriesActive = false
		}
		delete(s.grafted, topic)
	}
}

// sendRPC encodes rpc, split to fit the wire limits, and queues it to p.
func (r *Router) sendRPC(p *peer, rpc *RPC, urgent bool) {
	for _, b := range EncodeRPCs(rpc, r.cfg.Limits) {
		r.queue(p, b, urgent)
	}
}

func (r *Router) queue(p *peer, b []byte, urgent bool) { r.push(p, outItem{b: b}, urgent) }

// queueMsg queues an RPC carrying only message id; the writer drops it if
// the peer announces IDONTWANT for id before it is sent.
func (r *Router) queueMsg(p *peer, b []byte, id MsgID) {
	r.push(p, outItem{b: b, id: id, hasID: true}, false)
}

// push queues it for p and starts p's writer if none runs. Loop only (the
// loop is in r.wg, so adding the writer never races Close's Wait).
func (r *Router) push(p *peer, it outItem, urgent bool) {
	dropped, start := p.out.push(it, urgent)
	if dropped {
		r.stats.DropSendQueue.Add(1)
	}
	if start {
		r.wg.Add(1)
		go r.writer(p)
	}
}

// ---- subscriptions and publishing ----

func (r *Router) subscribe(topic string) (*Subscription, error) {
	if _, ok := r.mesh[topic]; ok {
		return nil, ErrSubscribed
	}
	if len(r.mesh) >= r.cfg.MaxTopics {
		return nil, ErrTooManyTopics
	}
	sub := &Subscription{topic: topic, ch: make(chan Message, r.cfg.SubscriptionSize)}
	r.subs[topic] = sub
	r.mesh[topic] = make(map[pki.Identity]struct{})
	announce := AppendRPC(nil, &RPC{Subs: []SubOpt{{Subscribe: true, Topic: topic}}})
	for _, p := range r.peers {
		r.queue(p, announce, false)
	}
	// Start from the fanout peers, then fill up to D.
	for id := range r.fanout[topic] {
		if len(r.mesh[topic]) >= r.cfg.D {
			break
		}
		if r.score(id) >= 0 && !r.inBackoff(topic, id) {
			r.joinMesh(topic, id)
		}
	}
	delete(r.fanout, topic)
	delete(r.lastPub, topic)
	for _, id := range r.pickPeers(topic, r.cfg.D-len(r.mesh[topic]), func(id pki.Identity) bool {
		_, in := r.mesh[topic][id]
		return !in && r.score(id) >= 0 && !r.inBackoff(topic, id)
	}) {
		r.joinMesh(topic, id)
	}
	for id := range r.mesh[topic] {
		r.stats.GraftSent.Add(1)
		r.sendRPC(r.peers[id], &RPC{Graft: []string{topic}}, false)
	}
	return sub, nil
}

func (r *Router) unsubscribe(topic string) error {
	sub := r.subs[topic]
	if sub == nil {
		return ErrNotSubscribed
	}
	close(sub.ch)
	delete(r.subs, topic)
	backoff := uint32(r.cfg.UnsubscribeBackoff / time.Second)
	for id := range r.mesh[topic] {
		r.stats.PruneSent.Add(1)
		r.sendRPC(r.peers[id], &RPC{Prune: []Prune{{Topic: topic, Backoff: backoff}}}, false)
		r.leaveMesh(topic, id)
	}
	delete(r.mesh, topic)
	for _, s := range r.scores {
		delete(s.stats.Topics, topic)
	}
	announce := AppendRPC(nil, &RPC{Subs: []SubOpt{{Subscribe: false, Topic: topic}}})
	for _, p := range r.peers {
		r.queue(p, announce, false)
	}
	return nil
}

func (r *Router) publish(topic string, data []byte) error {
	now := time.Now()
	if !r.pubBucket.Allow(now) {
		r.stats.DropPublishRate.Add(1)
		return ErrRateLimited
	}
	r.seqno++
	m := WireMessage{Seqno: r.seqno, Timestamp: unixMilli(now), Topic: topic, Data: data}
	SignMessage(r.key, &m)
	id := m.ID()
	if r.seen.add(id, m.Timestamp) {
		r.stats.DropSeenEvicted.Add(1)
	}
	e := &cacheEntry{msg: m, encoded: AppendRPC(nil, &RPC{Msgs: []WireMessage{m}}), firstSeen: now, firstFrom: r.self}
	r.mcache.put(e)
	r.stats.Published.Add(1)
	if _, ok := r.mesh[topic]; !ok {
		r.lastPub[topic] = now
		if r.fanout[topic] == nil {
			r.fanout[topic] = make(map[pki.Identity]struct{})
			for _, pid := range r.pickPeers(topic, r.cfg.D, func(pid pki.Identity) bool {
				return r.score(pid) >= r.cfg.Score.PublishThreshold
			}) {
				r.fanout[topic][pid] = struct{}{}
			}
		}
	}
	// Flood publishing: every topic peer above the publish threshold.
	// Without it, only the mesh, or the fanout when we do not subscribe.
	targets := r.topics[topic]
	if r.cfg.DisableFloodPublish {
		if targets = r.mesh[topic]; targets == nil {
			targets = r.fanout[topic]
		}
	}
	for pid := range targets {
		if r.score(pid) < r.cfg.Score.PublishThreshold {
			continue
		}
		r.queueMsg(r.peers[pid], e.encoded, id)
		r.stats.Forwarded.Add(1)
	}
	return nil
}

// pickPeers returns up to n random peers of topic that pass ok.
func (r *Router) pickPeers(topic string, n int, ok func(pki.Identity) bool) []pki.Identity {
	if n <= 0 {
		return nil
	}
	var c []pki.Identity
	for id := range r.topics[topic] {
		if ok(id) {
			c = append(c, id)
		}
	}
	r.rng.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
	if len(c) > n {
		c = c[:n]
	}
	return c
}

func (r *Router) inBackoff(topic string, id pki.Identity) bool {
	b := r.backoff[topic][id]
	return b != nil && time.Now().Before(b.until)
}

// addBackoff records that id must not be grafted to topic for d, keeping a
// longer existing backoff.
func (r *Router) addBackoff(topic string, id pki.Identity, d time.Duration) *backoffEntry {
	m := r.backoff[topic]
	if m == nil {
		m = make(map[pki.Identity]*backoffEntry)
		r.backoff[topic] = m
	}
	b := m[id]
	if b == nil {
		b = &backoffEntry{}
		m[id] = b
	}
	if until := time.Now().Add(d); until.After(b.until) {
		b.until = until
	}
	return b
}

// backoffFor is base * 2^n, capped.
func backoffFor(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// prune removes id from our mesh of topic and returns the PRUNE to send,
// whose backoff is PruneBackoff doubled for each prune in a row, capped at
// MaxPruneBackoff.
func (r *Router) prune(topic string, id pki.Identity) Prune {
	// Prunes in a row; a peer not pruned for 2*MaxPruneBackoff starts over.
	now := time.Now()
	n := 0
	if b := r.backoff[topic][id]; b != nil && now.Sub(b.pruned) < 2*r.cfg.MaxPruneBackoff {
		n = b.count
	}
	d := backoffFor(r.cfg.PruneBackoff, r.cfg.MaxPruneBackoff, n)
	r.leaveMesh(topic, id)
	b := r.addBackoff(topic, id, d)
	b.count, b.pruned = n+1, now
	r.stats.PruneSent.Add(1)
	return Prune{Topic: topic, Backoff: uint32((d + time.Second - 1) / time.Second)}
}

// ---- incoming ----

func (r *Router) handleRPC(from pki.Identity, b []byte) {
	r.stats.RPCsReceived.Add(1)
	r.stats.BytesReceived.Add(uint64(len(b)))
	p := r.peers[from]
	if p == nil {
		r.stats.DropUnknownPeer.Add(1)
		return
	}
	if r.noteGraylist(p, r.scoreOf(p, time.Now())) {
		r.stats.DropGraylisted.Add(1)
		return
	}
	rpc, err := DecodeRPC(b, r.cfg.Limits)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			r.stats.DropOversize.Add(1)
		} else {
			r.stats.DropMalformed.Add(1)
		}
		r.penalize(from, 1)
		return
	}
	var reply RPC
	for _, s := range rpc.Subs {
		r.handleSub(p, s)
	}
	for i := range rpc.Msgs {
		r.handleMessage(p, &rpc.Msgs[i])
	}
	if len(rpc.IHave) > 0 {
		reply.IWant = r.handleIHave(p, rpc.IHave)
	}
	if len(rpc.IWant) > 0 {
		r.handleIWant(p, rpc.IWant)
	}
	for _, t := range rpc.Graft {
		if pr, ok := r.handleGraft(p, t); ok {
			reply.Prune = append(reply.Prune, pr)
		}
	}
	for _, pr := range rpc.Prune {
		r.handlePrune(p, pr)
	}
	for _, id := range rpc.IDontWant {
		if p.dontWantAdd(id, r.tick) {
			r.stats.DropIDontWantEvicted.Add(1)
		}
	}
	for i := range rpc.Relay {
		r.handleSignal(p, &rpc.Relay[i])
	}
	r.sendRPC(p, &reply, false)
}

func (r *Router) handleSub(p *peer, s SubOpt) {
	if !s.Subscribe {
		if _, ok := p.topics[s.Topic]; ok {
			r.delTopicPeer(s.Topic, p.id)
			if _, in := r.mesh[s.Topic][p.id]; in {
				r.leaveMesh(s.Topic, p.id)
			}
			delete(r.fanout[s.Topic], p.id)
		}
		return
	}
	if _, ok := p.topics[s.Topic]; ok {
		return
	}
	m := r.topics[s.Topic]
	if m == nil {
		if len(r.topics) >= r.cfg.MaxTopics {
			r.stats.DropTopicLimit.Add(1)
			return
		}
		m = make(map[pki.Identity]struct{})
		r.topics[s.Topic] = m
	}
	if len(m) >= r.cfg.MaxPeersPerTopic || len(p.topics) >= r.cfg.MaxTopicsPerPeer {
		r.stats.DropPeerTopicLimit.Add(1)
		if len(m) == 0 {
			delete(r.topics, s.Topic)
		}
		return
	}
	m[p.id] = struct{}{}
	p.topics[s.Topic] = struct{}{}
}

func (r *Router) handleMessage(p *peer, m *WireMessage) {
	mesh, subscribed := r.mesh[m.Topic]
	if !subscribed {
		r.stats.DropNotSubscribed.Add(1)
		return
	}
	now := time.Now()
	if !p.recv.Allow(now) {
		r.stats.DropRateLimited.Add(1)
		return
	}
	// The age window first: it is what lets the bounded replay filter
	// below refuse every replay (see seenCache).
	switch timeVerdict(m.Timestamp, now, r.cfg.MaxMessageAge, r.cfg.MaxClockSkew) {
	case tooOld:
		r.stats.DropTooOld.Add(1)
		return
	case inFuture:
		r.stats.DropFuture.Add(1)
		return
	}
	id := m.ID()
	switch r.seen.check(id, m.Timestamp) {
	case seenDup:
		r.stats.Duplicates.Add(1)
		if e := r.mcache.get(id); e != nil {
			_, inMesh := mesh[p.id]
			if ts := r.topicStats(p.id, m.Topic); ts != nil && inMesh &&
				now.Sub(e.firstSeen) <= r.cfg.Score.Topic.MeshMessageDeliveriesWindow {
				ts.MeshMessageDeliveries = min(ts.MeshMessageDeliveries+1, r.cfg.Score.Topic.MeshMessageDeliveriesCap)
			}
		}
		return
	case seenTooOld:
		r.stats.DropReplay.Add(1)
		return
	}
	if m.From == r.self {
		r.stats.DropOwnMessage.Add(1)
		return
	}
	ok, buf := verifyMessage(m, r.sigBuf)
	r.sigBuf = buf
	if !ok {
		r.stats.DropInvalidSignature.Add(1)
		if ts := r.topicStats(p.id, m.Topic); ts != nil {
			ts.InvalidMessageDeliveries++
		}
		return
	}
	if r.seen.add(id, m.Timestamp) {
		r.stats.DropSeenEvicted.Add(1)
	}
	delete(r.promises, id)
	if ts := r.topicStats(p.id, m.Topic); ts != nil {
		tp := &r.cfg.Score.Topic
		ts.FirstMessageDeliveries = min(ts.FirstMessageDeliveries+1, tp.FirstMessageDeliveriesCap)
		if _, in := mesh[p.id]; in {
			ts.MeshMessageDeliveries = min(ts.MeshMessageDeliveries+1, tp.MeshMessageDeliveriesCap)
		}
	}
	e := &cacheEntry{msg: *m, encoded: AppendRPC(nil, &RPC{Msgs: []WireMessage{*m}}), firstSeen: now, firstFrom: p.id}
	r.mcache.put(e)

	if sub := r.subs[m.Topic]; sub != nil {
		// A copy: the cached one is forwarded and must stay as signed.
		data := append([]byte(nil), m.Data...)
		if r.deliver(sub, Message{Topic: m.Topic, Data: data, From: m.From, Seqno: m.Seqno,
			Published: time.UnixMilli(int64(m.Timestamp)), ReceivedFrom: p.id}) {
			if _, in := mesh[p.id]; in {
				r.stats.DeliveredMesh.Add(1)
			}
		}
	}

	// v1.2: tell mesh peers not to send it to us again, before forwarding.
	if !r.cfg.DisableIDontWant && len(m.Data) >= r.cfg.IDontWantMinSize {
		dw := AppendRPC(nil, &RPC{IDontWant: []MsgID{id}})
		for pid := range mesh {
			// The publisher too: its flood copies may still be queued.
			if pid == p.id {
				continue
			}
			r.queue(r.peers[pid], dw, true)
			r.stats.IDontWantSent.Add(1)
		}
	}
	for pid := range mesh {
		if pid == p.id || pid == m.From {
			continue
		}
		peer := r.peers[pid]
		if peer.dontWantHas(id) {
			r.stats.IDontWantHonored.Add(1)
			continue
		}
		r.queueMsg(peer, e.encoded, id)
		r.stats.Forwarded.Add(1)
	}
}

func (r *Router) deliver(sub *Subscription, m Message) bool {
	sent, dropped := sendDropOldest(sub.ch, m)
	if sent {
		r.stats.Delivered.Add(1)
	}
	r.stats.DropSubscriptionFull.Add(uint64(dropped))
	return sent
}

// sendDropOldest sends v on the bounded channel ch without blocking: when ch
// is full it discards the oldest value to make room. It reports whether v
// was sent and how many values (the oldest, or v itself) were dropped.
func sendDropOldest[T any](ch chan T, v T) (sent bool, dropped int) {
	select {
	case ch <- v:
		return true, 0
	default:
	}
	select {
	case <-ch:
		dropped++
	default:
	}
	select {
	case ch <- v:
		return true, dropped
	default:
		return false, dropped + 1
	}
}

func (r *Router) handleIHave(p *peer, ihaves []IHave) []MsgID {
	// Count before the gossip threshold check, so a spammer keeps paying
	// for its excess after we stopped listening to it.
	p.ihaves++
	if p.ihaves > r.cfg.MaxIHaveMessages {
		r.stats.DropIHaveExcess.Add(1)
		r.penalize(p.id, 1)
		return nil
	}
	if r.scoreOf(p, time.Now()) < r.cfg.Score.GossipThreshold {
		return nil
	}
	if p.asked >= r.cfg.MaxIHaveLength {
		return nil
	}
	var want []MsgID
	for _, ih := range ihaves {
		if _, ok := r.mesh[ih.Topic]; !ok {
			continue
		}
		for _, id := range ih.IDs {
			if r.seen.state(id) == seenNew && r.mcache.get(id) == nil {
				want = append(want, id)
			}
		}
	}
	if len(want) == 0 {
		return nil
	}
	r.rng.Shuffle(len(want), func(i, j int) { want[i], want[j] = want[j], want[i] })
	if n := r.cfg.MaxIHaveLength - p.asked; len(want) > n {
		want = want[:n]
	}
	p.asked += len(want)
	// Track one promise per IWANT, as go-libp2p-pubsub does: a peer that
	// advertises what it cannot deliver is penalized once per IHAVE.
	pid := want[r.rng.IntN(len(want))]
	pm := r.promises[pid]
	if pm == nil {
		pm = make(map[pki.Identity]time.Time)
		r.promises[pid] = pm
	}
	if _, ok := pm[p.id]; !ok {
		pm[p.id] = time.Now().Add(r.cfg.IWantFollowup)
	}
	r.stats.IWantSent.Add(uint64(len(want)))
	return want
}

func (r *Router) handleIWant(p *peer, ids []MsgID) {
	// Below the gossip threshold nothing is served, but requests for
	// messages we never had still cost a penalty.
	serve := r.scoreOf(p, time.Now()) >= r.cfg.Score.GossipThreshold
	bad := 0
	var batch []WireMessage
	size := 0
	flush := func() {
		if len(batch) > 0 {
			r.sendRPC(p, &RPC{Msgs: batch}, false)
		}
		batch, size = nil, 0
	}
	for _, id := range ids {
		e := r.mcache.get(id)
		if e == nil {
			bad++
			continue
		}
		if e.iwant == nil {
			e.iwant = make(map[pki.Identity]int)
		}
		if e.iwant[p.id] >= r.cfg.GossipRetransmit {
			bad++
			continue
		}
		if !serve {
			continue
		}
		e.iwant[p.id]++
		if p.dontWantHas(id) {
			continue
		}
		batch = append(batch, e.msg)
		size += len(e.encoded)
		r.stats.IWantServed.Add(1)
		if len(batch) >= r.cfg.Limits.MaxMsgs || size >= r.cfg.Limits.MaxRPCSize/2 {
			flush()
		}
	}
	flush()
	if bad > 0 {
		r.stats.DropIWantExcess.Add(uint64(bad))
		r.penalize(p.id, 1)
	}
}

// handleGraft returns a PRUNE to send back when the GRAFT is refused.
func (r *Router) handleGraft(p *peer, topic string) (Prune, bool) {
	mesh, ok := r.mesh[topic]
	if !ok {
		return Prune{}, false
	}
	if _, in := mesh[p.id]; in {
		return Prune{}, false
	}
	if _, sub := p.topics[topic]; !sub {
		// A GRAFT implies a subscription.
		r.handleSub(p, SubOpt{Subscribe: true, Topic: topic})
		if _, sub := p.topics[topic]; !sub {
			return Prune{}, false
		}
	}
	now := time.Now()
	if b := r.backoff[topic][p.id]; b != nil && now.Before(b.until) {
		pen := 1.0
		if now.Sub(b.pruned) < r.cfg.GraftFloodWindow {
			pen++
		}
		r.penalize(p.id, pen)
		return r.prune(topic, p.id), true
	}
	if r.scoreOf(p, time.Now()) < 0 || (len(mesh) >= r.cfg.Dhi && !p.outbound) {
		return r.prune(topic, p.id), true
	}
	r.joinMesh(topic, p.id)
	return Prune{}, false
}

func (r *Router) handlePrune(p *peer, pr Prune) {
	if _, in := r.mesh[pr.Topic][p.id]; in {
		r.leaveMesh(pr.Topic, p.id)
	}
	d := time.Duration(pr.Backoff) * time.Second
	if d == 0 {
		d = r.cfg.PruneBackoff
	}
	d = min(d, r.cfg.MaxPruneBackoff)
	if _, ok := r.mesh[pr.Topic]; ok {
		r.addBackoff(pr.Topic, p.id, d)
	}
}

// ---- relay signaling ----

// relayKey identifies a relay signal for duplicate suppression: its origin
// and nonce, laid out as a message ID is.
func relayKey(s *RelaySignal) MsgID { return MakeMsgID(s.Origin, s.Nonce) }

func (r *Router) handleSignal(p *peer, s *RelaySignal) {
	now := time.Now()
	if !p.relay.Allow(now) {
		r.stats.DropRelayRate.Add(1)
		return
	}
	if s.Hops == 0 || s.Hops > r.cfg.RelayMaxHops {
		r.stats.DropRelayHops.Add(1)
		return
	}
	if timeVerdict(s.Timestamp, now, r.cfg.RelayMaxAge, r.cfg.MaxClockSkew) != timeOK {
		r.stats.DropRelayStale.Add(1)
		return
	}
	k := relayKey(s)
	if r.relaySeen.has(k) || s.Timestamp <= r.relayFloor {
		r.stats.DropRelayDuplicate.Add(1)
		return
	}
	if !VerifyRelaySignal(s) {
		r.stats.DropRelayInvalid.Add(1)
		r.penalize(p.id, 1)
		return
	}
	r.relaySeenAdd(k, s.Timestamp)
	if s.Target == r.self {
		r.stats.RelayDelivered.Add(1)
		_, dropped := sendDropOldest(r.signals, Signal{From: s.Origin, Payload: s.Payload})
		r.stats.DropSignalQueue.Add(uint64(dropped))
		return
	}
	if s.Hops <= 1 {
		r.stats.DropRelayHops.Add(1)
		return
	}
	fwd := *s
	fwd.Hops--
	r.routeSignal(&fwd, p.id, true)
}

// relaySeenAdd remembers a signal sent at ts; evicting an older one (the
// set is full of signals younger than RelayMaxAge) raises relayFloor to its
// time.
func (r *Router) relaySeenAdd(k MsgID, ts uint64) {
	if v, evicted := r.relaySeen.add(k, ts); evicted {
		r.relayFloor = max(r.relayFloor, v)
		r.stats.DropRelaySeenEvicted.Add(1)
	}
}

// routeSignal sends s to its target if it is a neighbour, else to the union
// of our meshes (or all peers when we have no mesh), except the peer it came
// from and its origin.
func (r *Router) routeSignal(s *RelaySignal, from pki.Identity, forwarded bool) {
	b := AppendRPC(nil, &RPC{Relay: []RelaySignal{*s}})
	if t := r.peers[s.Target]; t != nil {
		r.queue(t, b, true)
		if forwarded {
			r.stats.RelayForwarded.Add(1)
			return
		}
		// Our own signal also goes through the mesh: the connection to
		// the target may be the one it is meant to repair.
	}
	targets := make(map[pki.Identity]struct{})
	for _, m := range r.mesh {
		for id := range m {
			targets[id] = struct{}{}
		}
	}
	if len(targets) == 0 {
		for id := range r.peers {
			targets[id] = struct{}{}
		}
	}
	limit := 2 * r.cfg.Dhi
	for id := range targets {
		if id == from || id == s.Origin || id == s.Target || r.score(id) < r.cfg.Score.GossipThreshold {
			continue
		}
		if limit == 0 {
			break
		}
		limit--
		r.queue(r.peers[id], b, true)
		if forwarded {
			r.stats.RelayForwarded.Add(1)
		}
	}
}

// unixMilli is t in Unix milliseconds, the wire's time (0 before 1970).
func unixMilli(t time.Time) uint64 { return uint64(max(t.UnixMilli(), 0)) }

// Verdicts of timeVerdict.
const (
	timeOK = iota
	tooOld
	inFuture
)

// timeVerdict tells whether a publish time ts (Unix ms) is acceptable at
// now: not older than maxAge, not more than skew ahead.
func timeVerdict(ts uint64, now time.Time, maxAge, skew time.Duration) int {
	n := unixMilli(now)
	if ts > n && ts-n > uint64(skew.Milliseconds()) {
		return inFuture
	}
	if n > ts && n-ts > uint64(maxAge.Milliseconds()) {
		return tooOld
	}
	return timeOK
}
