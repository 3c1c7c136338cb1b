package gossipsub

import (
	"fmt"
	"time"
)

// Config tunes a Router. The zero value of every field means the default
// written on it (the reference's values); DefaultConfig returns them filled in.
type Config struct {
	// Mesh degree parameters of GossipSub v1.1.
	D      int // desired mesh degree; default 6
	Dlo    int // graft below this; default 5
	Dhi    int // prune above this; default 12
	Dout   int // outbound peers kept in a mesh; default 2
	Dscore int // peers kept by score when pruning; default 4
	Dlazy  int // minimum gossip targets; default 6

	// DisableFloodPublish sends our own messages to our mesh (or fanout)
	// peers only, as GossipSub v1.0 does, instead of to every topic peer
	// above the publish threshold. Default false (flood publishing on, as
	// the reference does).
	DisableFloodPublish bool

	GossipFactor      float64       // fraction of eligible peers gossiped to; default 0.25
	HeartbeatInterval time.Duration // default 1s
	HistoryLength     int           // message cache windows; default 5
	HistoryGossip     int           // windows advertised in IHAVE; default 3
	FanoutTTL         time.Duration // default 60s

	PruneBackoff       time.Duration // first backoff after a prune; default 60s, doubled on each repeat
	MaxPruneBackoff    time.Duration // cap of the exponential backoff; default 10m
	UnsubscribeBackoff time.Duration // default 10s
	GraftFloodWindow   time.Duration // GRAFT this soon after our PRUNE costs an extra penalty; default 10s

	OpportunisticGraftTicks int // heartbeats between opportunistic grafts; default 60
	OpportunisticGraftPeers int // default 2

	MaxIHaveLength   int           // IDs advertised / asked per peer per heartbeat; default 5000
	MaxIHaveMessages int           // IHAVE entries accepted per peer per heartbeat; default 10
	IWantFollowup    time.Duration // time a peer has to answer our IWANT; default 3s
	GossipRetransmit int           // times a message is sent to one peer for IWANT; default 3

	// IDONTWANT (v1.2). The router sends IDONTWANT to its mesh peers for
	// every valid message with at least IDontWantMinSize bytes of data and
	// never sends a message to a peer that announced IDONTWANT for it.
	DisableIDontWant  bool // default false (IDONTWANT on)
	IDontWantMinSize  int  // default 1024
	MaxIDontWantPeer  int  // IDs remembered per peer; default 1000
	IDontWantTTLTicks int  // heartbeats an IDONTWANT is remembered; default 3

	// Limits from the reference.
	MaxMessageSize   int     // data bytes; default 64 KiB
	PublishRate      float64 // own publishes per second; default 100
	ReceiveRate      float64 // messages accepted per peer per second; default 50
	ReceiveBurst     int     // burst of the per-peer receive bucket; default 100
	MaxTopics        int     // topics known; default 10,000
	MaxPeersPerTopic int     // default 1,000
	MaxTopicsPerPeer int     // subscriptions tracked for one peer; default 1,000
	MaxSeenSources   int     // publishers with a replay window; default 10,000
	MaxScoredPeers   int     // peers with score state incl. retained; default 10,000

	// Message age. Every message carries its signed publish time; one
	// older than MaxMessageAge or more than MaxClockSkew ahead of our clock
	// is refused, so a message can be replayed only while it is young, and
	// then the replay filter still holds it (see seenCache).
	MaxMessageAge time.Duration // default 2m, the reference's message cache TTL; at least the message cache window
	MaxClockSkew  time.Duration // how far in the future a publish time may be; default 5s

	// Queues. Each is bounded and drops its oldest entry when full,
	// counting the drop (Stats).
	PeerSendQueue    int // RPCs waiting to be written to one peer; default 256
	PeerSendBytes    int // bytes of those; default 8 MiB
	PeerRecvQueue    int // RPCs received from one peer waiting for the router; default 256
	PeerRecvBytes    int // bytes of those; default 4 MiB
	SubscriptionSize int // messages waiting in one subscription; default 1024
	SignalQueue      int // relay signals waiting for the host; default 256

	// Relay signaling.
	RelayMaxHops uint8         // hops a signal may travel; default 8
	RelayRate    float64       // signals accepted per neighbour per second; default 20
	RelaySeen    int           // (origin, nonce) pairs remembered; default 10,000
	RelayMaxAge  time.Duration // signals older than this are refused; default 30s (the reference)

	Score ScoreParams

	// Wire limits for decoding. MaxMessageSize above overrides
	// Limits.MaxMessageSize.
	Limits Limits
}

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{}.withDefaults()
}

func (c Config) withDefaults() Config {
	setDefault(&c.D, 6)
	setDefault(&c.Dlo, 5)
	setDefault(&c.Dhi, 12)
	setDefault(&c.Dout, 2)
	setDefault(&c.Dscore, 4)
	setDefault(&c.Dlazy, 6)
	setDefault(&c.GossipFactor, 0.25)
	setDefault(&c.HeartbeatInterval, time.Second)
	setDefault(&c.HistoryLength, 5)
	setDefault(&c.HistoryGossip, 3)
	setDefault(&c.FanoutTTL, 60*time.Second)
	setDefault(&c.PruneBackoff, 60*time.Second)
	setDefault(&c.MaxPruneBackoff, 10*time.Minute)
	setDefault(&c.UnsubscribeBackoff, 10*time.Second)
	setDefault(&c.GraftFloodWindow, 10*time.Second)
	setDefault(&c.OpportunisticGraftTicks, 60)
	setDefault(&c.OpportunisticGraftPeers, 2)
	setDefault(&c.MaxIHaveLength, 5000)
	setDefault(&c.MaxIHaveMessages, 10)
	setDefault(&c.IWantFollowup, 3*time.Second)
	setDefault(&c.GossipRetransmit, 3)
	setDefault(&c.IDontWantMinSize, 1024)
	setDefault(&c.MaxIDontWantPeer, 1000)
	setDefault(&c.IDontWantTTLTicks, 3)
	setDefault(&c.MaxMessageSize, 64<<10)
	setDefault(&c.PublishRate, 100)
	setDefault(&c.ReceiveRate, 50)
	setDefault(&c.ReceiveBurst, 100)
	setDefault(&c.MaxTopics, 10000)
	setDefault(&c.MaxPeersPerTopic, 1000)
	setDefault(&c.MaxTopicsPerPeer, 1000)
	setDefault(&c.MaxSeenSources, 10000)
	setDefault(&c.MaxMessageAge, 2*time.Minute)
	setDefault(&c.MaxClockSkew, 5*time.Second)
	setDefault(&c.MaxScoredPeers, 10000)
	setDefault(&c.PeerSendQueue, 256)
	setDefault(&c.PeerRecvQueue, 256)
	setDefault(&c.PeerSendBytes, 8<<20)
	setDefault(&c.PeerRecvBytes, 4<<20)
	setDefault(&c.SubscriptionSize, 1024)
	setDefault(&c.SignalQueue, 256)
	setDefault(&c.RelayMaxHops, 8)
	setDefault(&c.RelayRate, 20)
	setDefault(&c.RelaySeen, 10000)
	setDefault(&c.RelayMaxAge, 30*time.Second)
	c.Score = c.Score.withDefaults()
	c.Limits.MaxMessageSize = c.MaxMessageSize
	c.Limits = c.Limits.withDefaults()
	return c
}

// setDefault sets *v to d if *v is the zero value.
func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Validate reports the first field whose value (after defaults) is
// unusable, by name.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(field string, format string, a ...any) error {
		return fmt.Errorf("gossipsub: Config.%s: "+format, append([]any{field}, a...)...)
	}
	switch {
	case c.D < 1:
		return bad("D", "%d < 1", c.D)
	case c.Dlo < 1 || c.Dlo > c.D:
		return bad("Dlo", "%d not in 1..D (%d)", c.Dlo, c.D)
	case c.Dhi < c.D:
		return bad("Dhi", "%d < D (%d)", c.Dhi, c.D)
	case c.Dout < 0 || c.Dout >= c.Dlo || c.Dout > c.D/2:
		return bad("Dout", "%d must be >= 0, < Dlo and <= D/2", c.Dout)
	case c.Dscore < 0 || c.Dscore > c.D:
		return bad("Dscore", "%d not in 0..D", c.Dscore)
	case c.Dlazy < 0:
		return bad("Dlazy", "negative")
	case c.GossipFactor < 0 || c.GossipFactor > 1:
		return bad("GossipFactor", "%v not in [0,1]", c.GossipFactor)
	case c.HeartbeatInterval < time.Millisecond:
		return bad("HeartbeatInterval", "%v too short", c.HeartbeatInterval)
	case c.HistoryGossip < 1 || c.HistoryGossip > c.HistoryLength:
		return bad("HistoryGossip", "%d not in 1..HistoryLength (%d)", c.HistoryGossip, c.HistoryLength)
	case c.FanoutTTL < 0:
		return bad("FanoutTTL", "negative")
	case c.PruneBackoff < 0:
		return bad("PruneBackoff", "negative")
	case c.MaxPruneBackoff < c.PruneBackoff:
		return bad("MaxPruneBackoff", "%v < PruneBackoff (%v)", c.MaxPruneBackoff, c.PruneBackoff)
	case c.UnsubscribeBackoff < 0:
		return bad("UnsubscribeBackoff", "negative")
	case c.MaxIHaveLength < 1 || c.MaxIHaveLength > c.Limits.MaxIHaveIDs:
		return bad("MaxIHaveLength", "%d not in 1..Limits.MaxIHaveIDs (%d)", c.MaxIHaveLength, c.Limits.MaxIHaveIDs)
	case c.IDontWantMinSize < 0:
		return bad("IDontWantMinSize", "negative")
	case c.MaxMessageSize < 1 || c.MaxMessageSize > c.Limits.MaxRPCSize/2:
		return bad("MaxMessageSize", "%d not in 1..Limits.MaxRPCSize/2", c.MaxMessageSize)
	case c.PublishRate < 0:
		return bad("PublishRate", "negative")
	case c.ReceiveRate < 0:
		return bad("ReceiveRate", "negative")
	case c.PeerSendBytes < c.Limits.MaxRPCSize:
		return bad("PeerSendBytes", "%d < Limits.MaxRPCSize (%d)", c.PeerSendBytes, c.Limits.MaxRPCSize)
	case c.PeerRecvBytes < c.Limits.MaxRPCSize:
		return bad("PeerRecvBytes", "%d < Limits.MaxRPCSize (%d)", c.PeerRecvBytes, c.Limits.MaxRPCSize)
	case c.RelayRate < 0:
		return bad("RelayRate", "negative")
	case c.MaxMessageAge < time.Duration(c.HistoryLength)*c.HeartbeatInterval:
		// A message still in our cache (and advertised in IHAVE) must
		// still be accepted by the peer that asks for it.
		return bad("MaxMessageAge", "%v < the message cache window HistoryLength*HeartbeatInterval (%v)",
			c.MaxMessageAge, time.Duration(c.HistoryLength)*c.HeartbeatInterval)
	case c.MaxClockSkew < 0:
		return bad("MaxClockSkew", "negative")
	case c.RelayMaxAge < time.Second:
		return bad("RelayMaxAge", "%v < 1s", c.RelayMaxAge)
	}
	type field struct {
		n string
		v int
	}
	for _, f := range []field{
		{"MaxIHaveMessages", c.MaxIHaveMessages}, {"MaxIDontWantPeer", c.MaxIDontWantPeer}, {"ReceiveBurst", c.ReceiveBurst},
		{"MaxTopics", c.MaxTopics}, {"MaxPeersPerTopic", c.MaxPeersPerTopic}, {"MaxTopicsPerPeer", c.MaxTopicsPerPeer},
		{"MaxSeenSources", c.MaxSeenSources}, {"MaxScoredPeers", c.MaxScoredPeers}, {"PeerSendQueue", c.PeerSendQueue},
		{"PeerRecvQueue", c.PeerRecvQueue}, {"SubscriptionSize", c.SubscriptionSize}, {"SignalQueue", c.SignalQueue},
	} {
		if f.v < 1 {
			return bad(f.n, "%d < 1", f.v)
		}
	}
	l := c.Limits
	for _, f := range []field{
		{"MaxSubs", l.MaxSubs}, {"MaxMsgs", l.MaxMsgs}, {"MaxIHaveTopics", l.MaxIHaveTopics}, {"MaxIHaveIDs", l.MaxIHaveIDs},
		{"MaxIWant", l.MaxIWant}, {"MaxControl", l.MaxControl}, {"MaxIDontWant", l.MaxIDontWant}, {"MaxRelay", l.MaxRelay},
		{"MaxRelayPayload", l.MaxRelayPayload},
	} {
		if f.v < 1 || f.v > 65535 {
			return bad("Limits."+f.n, "%d not in 1..65535 (a 16-bit count on the wire)", f.v)
		}
	}
	if l.MaxRPCSize < 1024 {
		return bad("Limits.MaxRPCSize", "%d < 1024", l.MaxRPCSize)
	}
	if err := c.Score.validate(); err != nil {
		return fmt.Errorf("gossipsub: Config.Score.%w", err)
	}
	return nil
}
