package gossipsub

import (
	"reflect"
	"sync/atomic"
)

// Stats are the router's counters since it started. Drops are counted by
// reason; nothing is logged per message.
type Stats struct {
	RPCsReceived  uint64
	BytesReceived uint64
	RPCsSent      uint64 // handed to the Sender without error
	BytesSent     uint64

	Published        uint64 // own messages published
	Delivered        uint64 // messages put on a subscription
	DeliveredMesh    uint64 // of those, first received from a peer in our mesh of the topic
	Forwarded        uint64 // message copies queued to peers
	Duplicates       uint64 // messages received again
	IHaveSent        uint64
	IWantSent        uint64 // message IDs asked for
	IWantServed      uint64 // messages sent because of IWANT
	GraftSent        uint64
	PruneSent        uint64
	IDontWantSent    uint64 // IDs announced
	IDontWantHonored uint64 // message copies not sent because of IDONTWANT

	RelayOriginated uint64
	RelayForwarded  uint64
	RelayDelivered  uint64

	BehaviourPenalties uint64
	BrokenPromises     uint64

	// Drops by reason.
	DropMalformed        uint64 // undecodable RPC
	DropOversize         uint64 // RPC or message over a size limit
	DropUnknownPeer      uint64 // RPC from a peer not added
	DropGraylisted       uint64 // RPC from a peer below the graylist threshold
	DropRecvQueue        uint64 // oldest RPC dropped from a full per-peer receive queue
	DropSendQueue        uint64 // oldest RPC dropped from a full per-peer send queue
	DropSendError        uint64 // Sender returned an error
	DropRateLimited      uint64 // message over the per-peer receive rate
	DropInvalidSignature uint64
	DropReplay           uint64 // seqno behind the source's replay window, or its source evicted after it was published
	DropTooOld           uint64 // publish time older than MaxMessageAge
	DropFuture           uint64 // publish time more than MaxClockSkew ahead
	DropSeenEvicted      uint64 // publishers' replay windows forgotten for room (raises the replay floor)
	DropNotSubscribed    uint64 // message for a topic we do not subscribe to
	DropOwnMessage       uint64 // a message claiming to be ours that we did not publish now
	DropSubscriptionFull uint64 // oldest message dropped from a full subscription
	DropTopicLimit       uint64 // topic beyond MaxTopics
	DropPeerTopicLimit   uint64 // subscription beyond MaxPeersPerTopic or MaxTopicsPerPeer
	DropIHaveExcess      uint64 // IHAVE beyond MaxIHaveMessages per heartbeat
	DropIWantExcess      uint64 // IWANT for unknown or over-retransmitted messages
	DropIDontWantEvicted uint64 // IDONTWANT entries evicted by the per-peer bound
	DropPublishRate      uint64 // Publish calls over PublishRate
	DropRelayRate        uint64
	DropRelayInvalid     uint64
	DropRelayDuplicate   uint64 // seen, or sent before a signal evicted from the seen set
	DropRelayStale       uint64 // older than RelayMaxAge or more than MaxClockSkew ahead
	DropRelaySeenEvicted uint64 // seen signals forgotten for room (raises the replay floor)
	DropRelayHops        uint64
	DropSignalQueue      uint64 // oldest signal dropped from the full signal channel
}

// counters mirrors Stats with atomic fields of the same names.
type counters struct {
	RPCsReceived, BytesReceived, RPCsSent, BytesSent                          atomic.Uint64
	Published, Delivered, Forwarded, Duplicates, IHaveSent, IWantSent         atomic.Uint64
	DeliveredMesh                                                             atomic.Uint64
	IWantServed, GraftSent, PruneSent, IDontWantSent, IDontWantHonored        atomic.Uint64
	RelayOriginated, RelayForwarded, RelayDelivered                           atomic.Uint64
	BehaviourPenalties, BrokenPromises                                        atomic.Uint64
	DropMalformed, DropOversize, DropUnknownPeer, DropGraylisted              atomic.Uint64
	DropRecvQueue, DropSendQueue, DropSendError, DropRateLimited              atomic.Uint64
	DropInvalidSignature, DropReplay, DropNotSubscribed, DropOwnMessage       atomic.Uint64
	DropSubscriptionFull, DropTopicLimit, DropPeerTopicLimit, DropIHaveExcess atomic.Uint64
	DropIWantExcess, DropIDontWantEvicted, DropPublishRate, DropRelayRate     atomic.Uint64
	DropRelayInvalid, DropRelayDuplicate, DropRelayHops, DropSignalQueue      atomic.Uint64
	DropTooOld, DropFuture, DropRelayStale, DropRelaySeenEvicted              atomic.Uint64
	DropSeenEvicted                                                           atomic.Uint64
}

func (c *counters) snapshot() Stats {
	var s Stats
	sv := reflect.ValueOf(&s).Elem()
	cv := reflect.ValueOf(c).Elem()
	for i := 0; i < cv.NumField(); i++ {
		v := cv.Field(i).Addr().Interface().(*atomic.Uint64).Load()
		sv.FieldByName(cv.Type().Field(i).Name).SetUint(v)
	}
	return s
}
