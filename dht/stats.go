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
	lookupLatency  histogram
}

func (d *DHT) drop(r DropReason) {
	d.mu.Lock()
	d.stats.drops[r]++
	d.mu.Unlock()
}

// Stats is a snapshot of the DHT's figures for `status`.
type Stats struct {
	TableSize      int               `json:"table_size"`      // contacts in the routing table
	Buckets        int               `json:"buckets"`         // non-empty buckets
	K              int               `json:"k"`               // current bucket size / replication factor
	Alpha          int               `json:"alpha"`           // current lookup parallelism
	Tiers          []time.Duration   `json:"tiers_ns"`        // latency tier centroids, fastest first
	TierPrefixes   int               `json:"tier_prefixes"`   // prefixes with RTT samples
	Records        int               `json:"records"`         // records stored for others and us
	RecordBytes    int               `json:"record_bytes"`    // their encoded size
	Handled        uint64            `json:"handled"`         // inbound requests answered
	Sent           uint64            `json:"sent"`            // outbound requests
	Failed         uint64            `json:"failed"`          // outbound requests without a valid answer
	Lookups        uint64            `json:"lookups"`         // iterative lookups started
	LookupFailures uint64            `json:"lookup_failures"` // of which failed
	Inserted       uint64            `json:"inserted"`        // contacts added to the table
	Evicted        uint64            `json:"evicted"`         // contacts removed as unresponsive
	Drops          map[string]uint64 `json:"drops"`           // by reason
	// LookupSeconds is the latency of lookups, finished or failed.
	LookupSeconds Histogram `json:"lookup_seconds"`
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
		LookupSeconds:  d.stats.lookupLatency.snapshot(),
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
	Identity pki.Identity     `json:"identity"`
	Addrs    []netip.AddrPort `json:"addrs"`
	Tier     int              `json:"tier"`   // latency tier of its address prefix, 0 = fastest
	RTT      time.Duration    `json:"rtt_ns"` // smoothed RTT of that prefix, 0 if unknown
	LastSeen time.Time        `json:"last_seen"`
	Failures int              `json:"failures"`
}

// BucketInfo is one non-empty bucket in a Snapshot.
type BucketInfo struct {
	Index        int           `json:"index"` // common prefix length with our node ID
	Contacts     []ContactInfo `json:"contacts"`
	Replacements int           `json:"replacements"`
}

// Snapshot is the routing table for the `peers` command.
type Snapshot struct {
	Self    NodeID          `json:"self"`
	K       int             `json:"k"`
	Alpha   int             `json:"alpha"`
	Tiers   []time.Duration `json:"tiers_ns"`
	Buckets []BucketInfo    `json:"buckets"`
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
