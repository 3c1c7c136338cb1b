package dht

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Limits from the reference specification. They bound what a peer can make
// us allocate or keep.
const (
	// NumBuckets is the number of k-buckets: one per common-prefix length.
	NumBuckets = 256
	// MinK, DefaultK and MaxK bound the bucket size and replication factor.
	MinK, DefaultK, MaxK = 10, 20, 30
	// MinAlpha, DefaultAlpha and MaxAlpha bound lookup parallelism.
	MinAlpha, DefaultAlpha, MaxAlpha = 2, 3, 5
	// MaxMessageSize is the largest request or response the DHT produces or
	// accepts, computed from the encoding (wire.go): a NODES or VALUE reply
	// of MaxContactsPerMessage contacts with MaxAddrs IPv6 addresses each,
	// 10,354 bytes, is the largest; a VALUE of MaxRecordsPerMessage records
	// and a STORE of one MaxRecordSize record are smaller. The RPC layer
	// caps the DHT protocol at it.
	MaxMessageSize = max(maxContactsReplySize, maxRecordsReplySize, maxStoreSize)
	// MaxValueSize is the largest stored value (an encoded record).
	MaxValueSize = 1 << 20
	// MaxAddrs bounds the addresses in a contact or record.
	MaxAddrs = 16
	// MaxRelays bounds the relay identities in a record.
	MaxRelays = 8
	// MaxContactsPerMessage bounds the contacts in one response.
	MaxContactsPerMessage = MaxK
	// MaxRecordsPerMessage bounds the records in one FIND_VALUE response.
	MaxRecordsPerMessage = 4
	// PerPeerStorageQuota and PerPeerEntryLimit bound what one peer may
	// store on us.
	PerPeerStorageQuota = 1 << 20
	PerPeerEntryLimit   = 100
	// MaxRecords bounds the whole record store.
	MaxRecords = 100_000
	// MaxTierPrefixes bounds the RTT-per-prefix LRU.
	MaxTierPrefixes = 10_000
	// MaxTiers bounds the number of latency tiers.
	MaxTiers = 7
)

// Config configures a DHT. The zero value of every field means its default,
// written on the field.
type Config struct {
	// PoWBits is the network's proof-of-work difficulty: contacts and
	// records whose identity does not meet it are dropped. Default
	// pki.DefaultPoWBits (24); simulations set it low. Use NoPoW for 0.
	PoWBits int
	// K is the initial bucket size and replication factor. Default 20.
	K int
	// Alpha is the initial lookup parallelism. Default 3.
	Alpha int
	// FixedKAlpha disables adaptation of k and alpha.
	FixedKAlpha bool
	// DisableTiering turns latency tiers off: lookups order candidates by
	// XOR distance only.
	DisableTiering bool
	// TierSlackBits is how many bits of common prefix with the target a
	// faster-tier contact may lack and still be "equally useful" as a
	// slower one. Default 2.
	TierSlackBits int

	// QueryTimeout bounds one request. Default 2s.
	QueryTimeout time.Duration
	// LookupTimeout bounds a whole iterative lookup. Default 20s.
	LookupTimeout time.Duration
	// RecordTTL is how long our published record is valid. Default 1h.
	RecordTTL time.Duration
	// MaxRecordTTL is the furthest in the future an accepted record may
	// expire. Default 24h.
	MaxRecordTTL time.Duration
	// RepublishInterval is how often our record is stored again. Default
	// RecordTTL/2.
	RepublishInterval time.Duration
	// RefreshInterval is how often idle buckets are refreshed with a random
	// lookup. Default 10m.
	RefreshInterval time.Duration
	// AdaptInterval is how often k, alpha and the tiers are recomputed.
	// Default 30s.
	AdaptInterval time.Duration

	// MaxPerPrefixPerBucket caps contacts of one IPv4 /24 or IPv6 /48 in a
	// bucket. Default 2.
	MaxPerPrefixPerBucket int
	// InsertBurst and InsertRefill rate-limit new table insertions per IPv4
	// /24 or IPv6 /48: a burst of InsertBurst, then one every InsertRefill.
	// Defaults 10 and 10s.
	InsertBurst  int
	InsertRefill time.Duration
	// MaxFailures is how many consecutive failed requests remove a contact.
	// Default 2.
	MaxFailures int
	// AllowLoopback lets records, contacts and hints name loopback
	// addresses, and our own addresses be loopback. Only a node that itself
	// listens on loopback sets it (tests, a cluster on one host); overlay
	// sets it from the node's socket. Whatever else addrpolicy refuses is
	// refused regardless.
	AllowLoopback bool
	// Identities remembers identities that passed pki's point check, so
	// replies naming known contacts cost no curve arithmetic. Nil: a cache
	// of DefaultIdentityCacheSize of the DHT's own. Simulations of many
	// nodes in one process share one.
	Identities *IdentityCache

	// Logger receives rare events (never one line per message). Nil
	// discards.
	Logger *slog.Logger
}

// NoPoW as Config.PoWBits means "no proof of work required" (tests and
// simulations only).
const NoPoW = -1

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	var c Config
	c.fill()
	return c
}

func (c *Config) fill() {
	if c.PoWBits == 0 {
		c.PoWBits = 24
	}
	if c.K == 0 {
		c.K = DefaultK
	}
	if c.Alpha == 0 {
		c.Alpha = DefaultAlpha
	}
	if c.TierSlackBits == 0 {
		c.TierSlackBits = 2
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = 2 * time.Second
	}
	if c.LookupTimeout == 0 {
		c.LookupTimeout = 20 * time.Second
	}
	if c.RecordTTL == 0 {
		c.RecordTTL = time.Hour
	}
	if c.MaxRecordTTL == 0 {
		c.MaxRecordTTL = 24 * time.Hour
	}
	if c.RepublishInterval == 0 {
		c.RepublishInterval = c.RecordTTL / 2
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = 10 * time.Minute
	}
	if c.AdaptInterval == 0 {
		c.AdaptInterval = 30 * time.Second
	}
	if c.MaxPerPrefixPerBucket == 0 {
		c.MaxPerPrefixPerBucket = 2
	}
	if c.InsertBurst == 0 {
		c.InsertBurst = 10
	}
	if c.InsertRefill == 0 {
		c.InsertRefill = 10 * time.Second
	}
	if c.MaxFailures == 0 {
		c.MaxFailures = 2
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Identities == nil {
		c.Identities = NewIdentityCache(DefaultIdentityCacheSize)
	}
}

// powBits returns the effective difficulty (NoPoW -> 0).
func (c *Config) powBits() int {
	if c.PoWBits < 0 {
		return 0
	}
	return c.PoWBits
}

// Validate reports the first field whose value is out of range. It checks
// the values as given (zero means default and is valid).
func (c Config) Validate() error {
	var errs []error
	bad := func(field string, v any, want string) {
		errs = append(errs, fmt.Errorf("dht: Config.%s = %v: %s", field, v, want))
	}
	if c.PoWBits != NoPoW && (c.PoWBits < 0 || c.PoWBits > 32) {
		bad("PoWBits", c.PoWBits, "want 0..32 or NoPoW")
	}
	if c.K != 0 && (c.K < MinK || c.K > MaxK) {
		bad("K", c.K, fmt.Sprintf("want %d..%d", MinK, MaxK))
	}
	if c.Alpha != 0 && (c.Alpha < MinAlpha || c.Alpha > MaxAlpha) {
		bad("Alpha", c.Alpha, fmt.Sprintf("want %d..%d", MinAlpha, MaxAlpha))
	}
	if c.TierSlackBits < 0 || c.TierSlackBits > 8 {
		bad("TierSlackBits", c.TierSlackBits, "want 0..8")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"QueryTimeout", c.QueryTimeout}, {"LookupTimeout", c.LookupTimeout},
		{"RecordTTL", c.RecordTTL}, {"MaxRecordTTL", c.MaxRecordTTL},
		{"RepublishInterval", c.RepublishInterval}, {"RefreshInterval", c.RefreshInterval},
		{"AdaptInterval", c.AdaptInterval}, {"InsertRefill", c.InsertRefill},
	} {
		if d.v < 0 {
			bad(d.name, d.v, "must not be negative")
		}
	}
	if c.MaxPerPrefixPerBucket < 0 || c.MaxPerPrefixPerBucket > MaxK {
		bad("MaxPerPrefixPerBucket", c.MaxPerPrefixPerBucket, fmt.Sprintf("want 0..%d", MaxK))
	}
	if c.InsertBurst < 0 {
		bad("InsertBurst", c.InsertBurst, "must not be negative")
	}
	if c.MaxFailures < 0 {
		bad("MaxFailures", c.MaxFailures, "must not be negative")
	}
	f := c
	f.fill()
	if f.RecordTTL > f.MaxRecordTTL {
		bad("RecordTTL", c.RecordTTL, "exceeds MaxRecordTTL")
	}
	if f.RepublishInterval >= f.RecordTTL {
		bad("RepublishInterval", c.RepublishInterval, "must be shorter than RecordTTL")
	}
	if f.QueryTimeout > f.LookupTimeout {
		bad("QueryTimeout", c.QueryTimeout, "exceeds LookupTimeout")
	}
	return errors.Join(errs...)
}
