package dht

import (
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
)

// DropReason says why the DHT dropped something a peer sent.
type DropReason int

const (
	dropMalformed       DropReason = iota // undecodable or out-of-range message
	dropSenderMismatch                    // request's sender is not the authenticated peer
	dropNoPoW                             // contact or sender without enough proof of work
	dropBadRecord                         // forged, expired or far-future record
	dropQuota                             // store quota exceeded
	dropStale                             // record older than the one we hold
	dropPrefixCap                         // too many contacts of one IP prefix in a bucket
	dropRateLimited                       // insertion rate limit of an IP prefix
	dropVerifyQueueFull                   // too many contacts waiting for a check ping
	dropBadResponse                       // undecodable or wrong-type response
	dropBadAddr                           // an address we may not send to: record, hint, or where a peer spoke from
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"malformed", "sender_mismatch", "no_pow", "bad_record", "quota", "stale",
	"prefix_cap", "rate_limited", "verify_queue_full", "bad_response", "bad_addr",
}

func (r DropReason) String() string {
	if r >= 0 && r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

type counters struct {
	drops          [numDropReasons]uint64
	handled        uint64
	sent, failed   uint64
	lookups        uint64
	lookupFailures uint64
	inserted       uint64
	evicted        uint64
}

func (d *DHT) drop(r DropReason) {
	d.mu.Lock()
	d.stats.drops[r]++
	d.mu.Unlock()
}

// Stats is a snapshot of the DHT's figures for `status`.
type Stats struct {
	TableSize      int               // contacts in the routing table
	Buckets        int               // non-empty buckets
	K              int               // current bucket size / replication factor
	Alpha          int               // current lookup parallelism
	Tiers          []time.Duration   // latency tier centroids, fastest first
	TierPrefixes   int               // prefixes with RTT samples
	Records        int               // records stored for others and us
	RecordBytes    int               // their encoded size
	Handled        uint64            // inbound requests answered
	Sent           uint64            // outbound requests
	Failed         uint64            // outbound requests without a valid answer
	Lookups        uint64            // iterative lookups started
	LookupFailures uint64            // of which failed
	Inserted       uint64            // contacts added to the table
	Evicted        uint64            // contacts removed as unresponsive
	Drops          map[string]uint64 // by reason
}

// Stats returns current counters.
func (d *DHT) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{
		TableSize:      d.table.size,
		K:              d.table.k,
		Alpha:          d.alpha,
		TierPrefixes:   d.rtt.ll.Len(),
		Records:        len(d.store.byID),
		RecordBytes:    d.store.bytes(),
		Handled:        d.stats.handled,
		Sent:           d.stats.sent,
		Failed:         d.stats.failed,
		Lookups:        d.stats.lookups,
		LookupFailures: d.stats.lookupFailures,
		Inserted:       d.stats.inserted,
		Evicted:        d.stats.evicted,
		Drops:          make(map[string]uint64, numDropReasons),
	}
	for i := range d.table.buckets {
		if len(d.table.buckets[i].entries) > 0 {
			s.Buckets++
		}
	}
	for _, c := range d.rtt.centroids {
		s.Tiers = append(s.Tiers, time.Duration(c*float64(time.Millisecond)))
	}
	for r, n := range d.stats.drops {
		s.Drops[DropReason(r).String()] = n
	}
	return s
}

// ContactInfo is one routing-table entry in a Snapshot.
type ContactInfo struct {
	Identity pki.Identity
	Addrs    []netip.AddrPort
	Tier     int           // latency tier of its address prefix, 0 = fastest
	RTT      time.Duration // smoothed RTT of that prefix, 0 if unknown
	LastSeen time.Time
	Failures int
}

// BucketInfo is one non-empty bucket in a Snapshot.
type BucketInfo struct {
	Index        int // common prefix length with our node ID
	Contacts     []ContactInfo
	Replacements int
}

// Snapshot is the routing table for the `peers` command.
type Snapshot struct {
	Self    NodeID
	K       int
	Alpha   int
	Tiers   []time.Duration
	Buckets []BucketInfo
}

// Snapshot copies the routing table.
func (d *DHT) Snapshot() Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Snapshot{Self: d.selfID, K: d.table.k, Alpha: d.alpha}
	for _, c := range d.rtt.centroids {
		s.Tiers = append(s.Tiers, time.Duration(c*float64(time.Millisecond)))
	}
	for i := range d.table.buckets {
		b := &d.table.buckets[i]
		if len(b.entries) == 0 {
			continue
		}
		bi := BucketInfo{Index: i, Replacements: len(b.replacements)}
		for _, e := range b.entries {
			a := e.c.addr().Addr()
			bi.Contacts = append(bi.Contacts, ContactInfo{
				Identity: e.c.Identity,
				Addrs:    append([]netip.AddrPort(nil), e.c.Addrs...),
				Tier:     d.rtt.tier(a),
				RTT:      d.rtt.rtt(a),
				LastSeen: e.lastSeen,
				Failures: e.fails,
			})
		}
		s.Buckets = append(s.Buckets, bi)
	}
	return s
}
