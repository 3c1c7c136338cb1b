package gossipsub

import (
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"time"
)

// TopicScoreParams weigh a peer's behaviour in one topic (P1-P4 of the
// GossipSub v1.1 score). The same parameters apply to every topic.
type TopicScoreParams struct {
	TopicWeight float64

	// P1: time in mesh, in quanta, capped. Positive.
	TimeInMeshWeight  float64
	TimeInMeshQuantum time.Duration
	TimeInMeshCap     float64

	// P2: first deliveries of valid messages, decayed and capped. Positive.
	FirstMessageDeliveriesWeight float64
	FirstMessageDeliveriesDecay  float64
	FirstMessageDeliveriesCap    float64

	// P3: squared deficit of mesh deliveries below the threshold once the
	// peer has been in the mesh for the activation time. Negative weight;
	// zero disables it (the default, as quiet topics would punish honest
	// peers).
	MeshMessageDeliveriesWeight     float64
	MeshMessageDeliveriesDecay      float64
	MeshMessageDeliveriesThreshold  float64
	MeshMessageDeliveriesCap        float64
	MeshMessageDeliveriesActivation time.Duration
	MeshMessageDeliveriesWindow     time.Duration

	// P3b: sticky penalty for leaving the mesh with a deficit. Negative.
	MeshFailurePenaltyWeight float64
	MeshFailurePenaltyDecay  float64

	// P4: squared count of invalid messages. Negative.
	InvalidMessageDeliveriesWeight float64
	InvalidMessageDeliveriesDecay  float64
}

// ScoreParams are the peer score parameters and thresholds. If the whole
// struct is zero, DefaultScoreParams is used; otherwise it is used as given
// (so a weight can be set to zero).
type ScoreParams struct {
	Topic         TopicScoreParams
	TopicScoreCap float64 // cap of the sum of positive topic contributions; 0 = none

	// P5: application-specific score (Router.SetAppScore) times this weight.
	AppSpecificWeight float64

	// P6: peers sharing an IP prefix beyond the threshold, squared, times
	// a negative weight, capped. Peers on the public internet are grouped
	// by prefix (/16 for IPv4, /32 for IPv6, as the reference and the
	// DHT's latency tiers do), not by exact address: one operator of many
	// sybils usually holds a block. The threshold leaves a subnet's worth
	// of honest peers free: up to D_hi (12) peers from one block can fill
	// a whole mesh. The cap (the reference's rule) keeps P6 alone above
	// the graylist: a crowd in one block is kept out of our meshes, gossip
	// and flood publishing, but we still hear it; graylisting takes real
	// misbehaviour on top (P4, P7). See colocationPrefix for loopback and
	// private addresses.
	IPColocationFactorWeight    float64
	IPColocationFactorThreshold int     // peers in one prefix, the scored one included, that cost nothing
	IPColocationFactorCap       float64 // largest P6 penalty (a magnitude); 0 = uncapped
	IPv4PrefixBits              int     // colocation groups public IPv4 peers by this prefix
	IPv6PrefixBits              int
	// IPColocationWhitelist lists prefixes P6 does not count (as
	// go-libp2p-pubsub's IPColocationFactorWhitelist): an operator's own
	// public subnet whose nodes all peer with each other. Default none.
	IPColocationWhitelist []netip.Prefix

	// P7: behaviour penalty above a threshold, squared. Negative.
	BehaviourPenaltyWeight    float64
	BehaviourPenaltyThreshold float64
	BehaviourPenaltyDecay     float64

	DecayInterval time.Duration
	DecayToZero   float64
	RetainScore   time.Duration // score state kept after a peer leaves

	// Thresholds (all <= 0 except OpportunisticGraftThreshold).
	GossipThreshold             float64 // below: no gossip to or from the peer
	PublishThreshold            float64 // below: no flood publishing to the peer
	GraylistThreshold           float64 // below: all its RPCs are ignored
	OpportunisticGraftThreshold float64 // median mesh score below this triggers opportunistic grafting
}

// DefaultScoreParams returns the default scoring. Graylisting is reached by
// three invalid messages (P4) or a behaviour penalty of 9 or more (P7). P6
// starts at 13 peers in one /16 (-5) and reaches its cap of -75 at 16:
// below the publish threshold (-50), 5 short of the graylist (-80), so any
// real penalty on top (one invalid message, a behaviour penalty 0.71 past
// its threshold) graylists such a peer.
func DefaultScoreParams() ScoreParams {
	return ScoreParams{
		Topic: TopicScoreParams{
			TopicWeight:                     1,
			TimeInMeshWeight:                0.0028,
			TimeInMeshQuantum:               time.Second,
			TimeInMeshCap:                   3600,
			FirstMessageDeliveriesWeight:    0.5,
			FirstMessageDeliveriesDecay:     0.99,
			FirstMessageDeliveriesCap:       20,
			MeshMessageDeliveriesWeight:     0,
			MeshMessageDeliveriesDecay:      0.97,
			MeshMessageDeliveriesThreshold:  1,
			MeshMessageDeliveriesCap:        20,
			MeshMessageDeliveriesActivation: 30 * time.Second,
			MeshMessageDeliveriesWindow:     10 * time.Millisecond,
			MeshFailurePenaltyWeight:        0,
			MeshFailurePenaltyDecay:         0.97,
			InvalidMessageDeliveriesWeight:  -10,
			InvalidMessageDeliveriesDecay:   0.99,
		},
		TopicScoreCap:               50,
		AppSpecificWeight:           1,
		IPColocationFactorWeight:    -5,
		IPColocationFactorThreshold: 12,
		IPColocationFactorCap:       75,
		IPv4PrefixBits:              16,
		IPv6PrefixBits:              32,
		BehaviourPenaltyWeight:      -10,
		BehaviourPenaltyThreshold:   6,
		BehaviourPenaltyDecay:       0.9,
		DecayInterval:               time.Second,
		DecayToZero:                 0.01,
		RetainScore:                 5 * time.Minute,
		GossipThreshold:             -10,
		PublishThreshold:            -50,
		GraylistThreshold:           -80,
		OpportunisticGraftThreshold: 1,
	}
}

func (p ScoreParams) withDefaults() ScoreParams {
	if reflect.ValueOf(p).IsZero() {
		return DefaultScoreParams()
	}
	return p
}

func (p ScoreParams) validate() error {
	t := p.Topic
	decay := func(name string, v float64) error {
		if v < 0 || v >= 1 {
			return fmt.Errorf("%s: decay %v not in [0,1)", name, v)
		}
		return nil
	}
	switch {
	case t.TopicWeight < 0:
		return fmt.Errorf("Topic.TopicWeight: negative")
	case t.TimeInMeshWeight < 0:
		return fmt.Errorf("Topic.TimeInMeshWeight: negative")
	case t.TimeInMeshWeight > 0 && t.TimeInMeshQuantum <= 0:
		return fmt.Errorf("Topic.TimeInMeshQuantum: must be positive")
	case t.FirstMessageDeliveriesWeight < 0:
		return fmt.Errorf("Topic.FirstMessageDeliveriesWeight: negative")
	case t.MeshMessageDeliveriesWeight > 0:
		return fmt.Errorf("Topic.MeshMessageDeliveriesWeight: positive")
	case t.MeshFailurePenaltyWeight > 0:
		return fmt.Errorf("Topic.MeshFailurePenaltyWeight: positive")
	case t.InvalidMessageDeliveriesWeight > 0:
		return fmt.Errorf("Topic.InvalidMessageDeliveriesWeight: positive")
	case p.IPColocationFactorWeight > 0:
		return fmt.Errorf("IPColocationFactorWeight: positive")
	case p.IPColocationFactorWeight < 0 && p.IPColocationFactorThreshold < 1:
		return fmt.Errorf("IPColocationFactorThreshold: %d < 1", p.IPColocationFactorThreshold)
	case p.IPColocationFactorCap < 0:
		return fmt.Errorf("IPColocationFactorCap: negative (it is a magnitude)")
	case len(p.IPColocationWhitelist) > 1000:
		return fmt.Errorf("IPColocationWhitelist: %d prefixes, at most 1000 (it is checked per peer)", len(p.IPColocationWhitelist))
	case p.IPv4PrefixBits < 0 || p.IPv4PrefixBits > 32:
		return fmt.Errorf("IPv4PrefixBits: %d not in 0..32", p.IPv4PrefixBits)
	case p.IPv6PrefixBits < 0 || p.IPv6PrefixBits > 128:
		return fmt.Errorf("IPv6PrefixBits: %d not in 0..128", p.IPv6PrefixBits)
	case p.BehaviourPenaltyWeight > 0:
		return fmt.Errorf("BehaviourPenaltyWeight: positive")
	case p.DecayInterval <= 0:
		return fmt.Errorf("DecayInterval: must be positive")
	case p.GossipThreshold > 0:
		return fmt.Errorf("GossipThreshold: positive")
	case p.PublishThreshold > p.GossipThreshold:
		return fmt.Errorf("PublishThreshold: %v above GossipThreshold %v", p.PublishThreshold, p.GossipThreshold)
	case p.GraylistThreshold > p.PublishThreshold:
		return fmt.Errorf("GraylistThreshold: %v above PublishThreshold %v", p.GraylistThreshold, p.PublishThreshold)
	}
	for _, d := range []struct {
		n string
		v float64
	}{
		{"Topic.FirstMessageDeliveriesDecay", t.FirstMessageDeliveriesDecay},
		{"Topic.MeshMessageDeliveriesDecay", t.MeshMessageDeliveriesDecay},
		{"Topic.MeshFailurePenaltyDecay", t.MeshFailurePenaltyDecay},
		{"Topic.InvalidMessageDeliveriesDecay", t.InvalidMessageDeliveriesDecay},
		{"BehaviourPenaltyDecay", p.BehaviourPenaltyDecay},
	} {
		if err := decay(d.n, d.v); err != nil {
			return err
		}
	}
	return nil
}

// TopicStats are the counters behind P1-P4 for one peer in one topic.
type TopicStats struct {
	InMesh                      bool
	MeshTime                    time.Duration // time since GRAFT, while InMesh
	FirstMessageDeliveries      float64
	MeshMessageDeliveries       float64
	MeshMessageDeliveriesActive bool // MeshTime has passed the activation time
	MeshFailurePenalty          float64
	InvalidMessageDeliveries    float64
}

// PeerStats are the inputs of one peer's score.
type PeerStats struct {
	Topics           map[string]*TopicStats
	AppScore         float64
	IPColocated      int // peers sharing this peer's IP prefix, itself included
	BehaviourPenalty float64
}

// ComputeScore is the GossipSub v1.1 peer score: a pure function of the
// parameters and the peer's counters.
func ComputeScore(p *ScoreParams, s *PeerStats) float64 {
	t := &p.Topic
	var topics float64
	for _, ts := range s.Topics {
		var ts1 float64
		if ts.InMesh && t.TimeInMeshQuantum > 0 {
			p1 := float64(ts.MeshTime) / float64(t.TimeInMeshQuantum)
			ts1 += math.Min(p1, t.TimeInMeshCap) * t.TimeInMeshWeight
		}
		ts1 += math.Min(ts.FirstMessageDeliveries, t.FirstMessageDeliveriesCap) * t.FirstMessageDeliveriesWeight
		if ts.MeshMessageDeliveriesActive && ts.MeshMessageDeliveries < t.MeshMessageDeliveriesThreshold {
			d := t.MeshMessageDeliveriesThreshold - ts.MeshMessageDeliveries
			ts1 += d * d * t.MeshMessageDeliveriesWeight
		}
		ts1 += ts.MeshFailurePenalty * t.MeshFailurePenaltyWeight
		ts1 += ts.InvalidMessageDeliveries * ts.InvalidMessageDeliveries * t.InvalidMessageDeliveriesWeight
		topics += ts1 * t.TopicWeight
	}
	if p.TopicScoreCap > 0 && topics > p.TopicScoreCap {
		topics = p.TopicScoreCap
	}
	score := topics + s.AppScore*p.AppSpecificWeight
	score += colocationPenalty(p, s.IPColocated)
	if excess := s.BehaviourPenalty - p.BehaviourPenaltyThreshold; excess > 0 {
		score += excess * excess * p.BehaviourPenaltyWeight
	}
	return score
}

// decayStats applies one decay interval to s; it is pure apart from
// mutating s. The P3 activation is updated from MeshTime.
func decayStats(p *ScoreParams, s *PeerStats) {
	t := &p.Topic
	z := func(v float64) float64 {
		if v < p.DecayToZero {
			return 0
		}
		return v
	}
	for _, ts := range s.Topics {
		ts.FirstMessageDeliveries = z(ts.FirstMessageDeliveries * t.FirstMessageDeliveriesDecay)
		ts.MeshMessageDeliveries = z(ts.MeshMessageDeliveries * t.MeshMessageDeliveriesDecay)
		ts.MeshFailurePenalty = z(ts.MeshFailurePenalty * t.MeshFailurePenaltyDecay)
		ts.InvalidMessageDeliveries = z(ts.InvalidMessageDeliveries * t.InvalidMessageDeliveriesDecay)
		if ts.InMesh && ts.MeshTime >= t.MeshMessageDeliveriesActivation {
			ts.MeshMessageDeliveriesActive = true
		}
	}
	s.BehaviourPenalty = z(s.BehaviourPenalty * p.BehaviourPenaltyDecay)
}

// colocationPenalty is P6 times its weight for a peer whose prefix holds n
// peers (itself included): the squared surplus over the threshold, capped.
func colocationPenalty(p *ScoreParams, n int) float64 {
	surplus := n - p.IPColocationFactorThreshold
	if surplus <= 0 {
		return 0
	}
	v := float64(surplus) * float64(surplus) * p.IPColocationFactorWeight
	if p.IPColocationFactorCap > 0 && v < -p.IPColocationFactorCap {
		v = -p.IPColocationFactorCap
	}
	return v
}

// colocationPrefix returns the group P6 counts ip in; the zero Prefix means
// none (no P6). It is a pure function of the parameters and the address:
//
//   - loopback: none. Such a peer runs on our own host, where whoever
//     starts processes can do worse than sybils; local clusters and
//     in-process tests run there (go-libp2p-pubsub skips loopback too).
//   - private (RFC 1918, RFC 4193) and link-local: the exact address. The
//     peer is on our own network, whose whole range a LAN or a cloud
//     subnet shares, so a block says nothing about operators there; many
//     sybils on one host still share one address.
//   - in IPColocationWhitelist: none.
//   - anything else: the IPv4 or IPv6 prefix of the parameters.
func colocationPrefix(p *ScoreParams, ip netip.Addr) netip.Prefix {
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() || ip.IsLoopback() || ip.IsUnspecified() {
		return netip.Prefix{}
	}
	for _, w := range p.IPColocationWhitelist {
		if w.Contains(ip) {
			return netip.Prefix{}
		}
	}
	bits := p.IPv6PrefixBits
	if ip.Is4() {
		bits = p.IPv4PrefixBits
	}
	if ip.IsPrivate() || ip.IsLinkLocalUnicast() {
		bits = ip.BitLen()
	}
	pfx, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return pfx
}
