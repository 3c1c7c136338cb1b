package gossipsub

import (
	"slices"
	"time"

	"github.com/korium/korium-tun/internal/ratelimit"
	"github.com/korium/korium-tun/pki"
)

// newBucket is a rate limiter of rate tokens a second holding burst (at
// least one), driven by the router's clock.
func newBucket(rate float64, burst int) ratelimit.Limiter {
	return ratelimit.New(ratelimit.PerSecondFloat(rate, int64(max(burst, 1))))
}

// heartbeat maintains meshes and fanout, emits gossip, applies broken
// promises, shifts the message cache and decays scores.
func (r *Router) heartbeat() {
	r.tick++
	now := time.Now()
	out := make(map[pki.Identity]*RPC)
	rpcFor := func(id pki.Identity) *RPC {
		x := out[id]
		if x == nil {
			x = &RPC{}
			out[id] = x
		}
		return x
	}
	// Scores are computed when first needed and kept on the peer for the
	// rest of the heartbeat: an idle heartbeat scores its mesh peers, not
	// every connected peer (at 1,000 peers scoring them all was most of
	// it), and a score costs one lookup of the peer, not a map of scores
	// filled each second (the 1,000-node churn simulation spent an eighth
	// of its CPU scoring, most of it in cache misses on maps).
	score := func(id pki.Identity) float64 {
		p := r.peers[id]
		if p == nil { // removePeer takes a peer out of every mesh, topic and fanout: not expected
			return r.scoreAt(id, now)
		}
		if p.hbTick != r.tick {
			p.hbTick, p.hbScore = r.tick, r.scoreOf(p, now)
			r.noteGraylist(p, p.hbScore)
		}
		return p.hbScore
	}

	for topic, mesh := range r.mesh {
		// Drop peers with negative score.
		for id := range mesh {
			if score(id) < 0 {
				x := rpcFor(id)
				x.Prune = append(x.Prune, r.prune(topic, id))
			}
		}
		candidate := func(id pki.Identity) bool {
			_, in := mesh[id]
			return !in && score(id) >= 0 && !r.inBackoff(topic, id)
		}
		graft := func(id pki.Identity) {
			r.joinMesh(topic, id)
			x := rpcFor(id)
			x.Graft = append(x.Graft, topic)
			r.stats.GraftSent.Add(1)
		}
		if len(mesh) < r.cfg.Dlo {
			for _, id := range r.pickPeers(topic, r.cfg.D-len(mesh), candidate) {
				graft(id)
			}
		}
		if len(mesh) > r.cfg.Dhi {
			keep := selectMesh(mesh, score, func(id pki.Identity) bool { return r.peers[id].outbound },
				r.cfg.D, r.cfg.Dscore, r.cfg.Dout, r.rng.Shuffle)
			for id := range mesh {
				if _, k := keep[id]; !k {
					x := rpcFor(id)
					x.Prune = append(x.Prune, r.prune(topic, id))
				}
			}
		}
		if len(mesh) >= r.cfg.Dlo {
			outbound := 0
			for id := range mesh {
				if r.peers[id].outbound {
					outbound++
				}
			}
			if outbound < r.cfg.Dout {
				for _, id := range r.pickPeers(topic, r.cfg.Dout-outbound, func(id pki.Identity) bool {
					return candidate(id) && r.peers[id].outbound
				}) {
					graft(id)
				}
			}
		}
		if r.tick%uint64(r.cfg.OpportunisticGraftTicks) == 0 && len(mesh) > 1 {
			ms := make([]float64, 0, len(mesh))
			for id := range mesh {
				ms = append(ms, score(id))
			}
			slices.Sort(ms)
			median := ms[len(ms)/2]
			if median < r.cfg.Score.OpportunisticGraftThreshold {
				for _, id := range r.pickPeers(topic, r.cfg.OpportunisticGraftPeers, func(id pki.Identity) bool {
					return candidate(id) && score(id) > median
				}) {
					graft(id)
				}
			}
		}
		r.emitGossip(topic, mesh, score, rpcFor)
	}

	for topic, fan := range r.fanout {
		if now.Sub(r.lastPub[topic]) > r.cfg.FanoutTTL {
			delete(r.fanout, topic)
			delete(r.lastPub, topic)
			continue
		}
		for id := range fan {
			if _, ok := r.topics[topic][id]; !ok || score(id) < r.cfg.Score.PublishThreshold {
				delete(fan, id)
			}
		}
		if len(fan) < r.cfg.D {
			for _, id := range r.pickPeers(topic, r.cfg.D-len(fan), func(id pki.Identity) bool {
				_, in := fan[id]
				return !in && score(id) >= r.cfg.Score.PublishThreshold
			}) {
				fan[id] = struct{}{}
			}
		}
		r.emitGossip(topic, fan, score, rpcFor)
	}

	for id, x := range out {
		if p := r.peers[id]; p != nil {
			r.sendRPC(p, x, false)
		}
	}

	// Broken promises: a peer that advertised a message we asked for and
	// did not deliver it in time.
	for mid, pm := range r.promises {
		for id, deadline := range pm {
			if now.After(deadline) {
				delete(pm, id)
				r.stats.BrokenPromises.Add(1)
				r.penalize(id, 1)
			}
		}
		if len(pm) == 0 {
			delete(r.promises, mid)
		}
	}

	r.mcache.shift()
	// Signals older than RelayMaxAge are refused by age: no need to
	// remember them.
	if a := uint64(r.cfg.RelayMaxAge.Milliseconds()); unixMilli(now) > a {
		r.relaySeen.expire(unixMilli(now) - a)
	}
	for _, p := range r.peers {
		p.ihaves, p.asked = 0, 0
		if r.tick > uint64(r.cfg.IDontWantTTLTicks) {
			p.dontWantExpire(r.tick - uint64(r.cfg.IDontWantTTLTicks))
		}
	}
	for topic, m := range r.backoff {
		for id, b := range m {
			if now.Sub(b.until) > 2*r.cfg.MaxPruneBackoff {
				delete(m, id)
			}
		}
		if len(m) == 0 {
			delete(r.backoff, topic)
		}
	}
	for now.Sub(r.lastDecay) >= r.cfg.Score.DecayInterval {
		r.lastDecay = r.lastDecay.Add(r.cfg.Score.DecayInterval)
		for id, s := range r.scores {
			if !s.retainTo.IsZero() && now.After(s.retainTo) {
				delete(r.scores, id)
				continue
			}
			decayStats(&r.cfg.Score, &s.stats)
		}
	}
}

// emitGossip sends IHAVE for the topic's recent messages to a random set
// of non-mesh peers above the gossip threshold: max(Dlazy, GossipFactor *
// eligible).
func (r *Router) emitGossip(topic string, exclude map[pki.Identity]struct{}, score func(pki.Identity) float64, rpcFor func(pki.Identity) *RPC) {
	ids := r.mcache.gossipIDs(topic, r.cfg.MaxIHaveLength)
	if len(ids) == 0 {
		return
	}
	var c []pki.Identity
	for id := range r.topics[topic] {
		if _, ex := exclude[id]; !ex && score(id) >= r.cfg.Score.GossipThreshold {
			c = append(c, id)
		}
	}
	n := max(r.cfg.Dlazy, int(r.cfg.GossipFactor*float64(len(c))))
	r.rng.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
	if len(c) > n {
		c = c[:n]
	}
	for _, id := range c {
		x := rpcFor(id)
		x.IHave = append(x.IHave, IHave{Topic: topic, IDs: ids})
		r.stats.IHaveSent.Add(1)
	}
}

// selectMesh chooses which mesh peers to keep when the mesh is over Dhi: the
// dscore best by score, the rest at random up to d, then swaps in outbound
// peers until dout of them are kept. Apart from shuffle and score (the
// heartbeat's, which keeps each score on its peer) it is pure.
func selectMesh(mesh map[pki.Identity]struct{}, score func(pki.Identity) float64, outbound func(pki.Identity) bool,
	d, dscore, dout int, shuffle func(n int, swap func(i, j int))) map[pki.Identity]struct{} {
	all := make([]pki.Identity, 0, len(mesh))
	for id := range mesh {
		all = append(all, id)
	}
	shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	slices.SortStableFunc(all, func(a, b pki.Identity) int {
		switch sa, sb := score(a), score(b); {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	rest := all[dscore:]
	shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	if d > len(all) {
		d = len(all)
	}
	kept := all[:d]
	nOut := 0
	for _, id := range kept {
		if outbound(id) {
			nOut++
		}
	}
	// Replace non-outbound peers at the tail of the kept set by outbound
	// peers from the discarded set.
	for j := d; j < len(all) && nOut < dout; j++ {
		if !outbound(all[j]) {
			continue
		}
		for i := d - 1; i >= 0; i-- {
			if !outbound(all[i]) {
				all[i], all[j] = all[j], all[i]
				nOut++
				break
			}
		}
	}
	keep := make(map[pki.Identity]struct{}, d)
	for _, id := range all[:d] {
		keep[id] = struct{}{}
	}
	return keep
}
