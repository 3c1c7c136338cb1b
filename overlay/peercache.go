package overlay

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/peercache"
	"github.com/korium/korium-tun/pki"
)

// The node's peer cache (the reference's passive view of 100 recovery
// candidates): the signed records of peers it reached, persisted at
// Config.PeerCache. One goroutine, the keeper, owns the cache's file: it
// learns of each new connection (peerUp posts the identity, never
// blocking), fetches the peer's signed record, saves the file when it
// changed (at most once per peerCacheSaveEvery, and once more when the
// node closes), and rejoins through the cached peers when the node has no
// connection at all (no bootstrap peer answered, or they all left).

// Timing and bounds of the peer cache keeper.
const (
	peerCacheSaveEvery = 10 * time.Second // bounded write rate
	peerCacheRefresh   = 10 * time.Minute // a peer's record is fetched again after this
	peerCacheRetry     = 5 * time.Second  // after a first failed fetch (its record may not be published yet), doubling
	peerCacheMaxFails  = 5                // failed fetches in a row before the peer is left alone until it connects again
	peerCacheSweep     = 5 * time.Second  // how often connected peers not cached are looked for
	peerCacheResolve   = 5 * time.Second  // one record fetch
	peerCacheQueue     = 256              // peers waiting for their record to be fetched
	peerCacheSweepMax  = 8                // fetches per sweep
	rejoinAfter        = 3 * time.Second  // alone this long: dial the cache
	rejoinEvery        = 10 * time.Second // at most one rejoin round this often
	rejoinParallel     = 8                // cached peers dialed at once
	rejoinDial         = 5 * time.Second  // one cached peer's dial
)

// peerCacheState is the node's side of its peer cache.
type peerCacheState struct {
	cache *peercache.Cache // nil: no cache (Config.PeerCache empty)
	path  string
	up    chan pki.Identity // peerUp -> keeper; full: the peer is skipped

	loaded, refused int // what the file gave at start (set before the keeper runs)
	loadErr         string

	saves, saveErrors, queueDropped, fetchFailed, rejoins, rejoined atomic.Uint64

	// Owned by the keeper: when each peer's record may be fetched again.
	fetched map[pki.Identity]fetchState
}

// fetchState is when a peer's record may be fetched again, and how many
// fetches failed in a row. A peer that publishes no record (a node
// without the DHT, or one whose record does not reach us) is asked
// peerCacheMaxFails times, 5 s, 10 s, 20 s and 40 s apart, and then not
// again while its connection lasts: a node holding a thousand such peers
// ran eight failing lookups every 5 s for as long as it lived (about
// 100 DHT requests per sweep, most of its idle packets and CPU).
type fetchState struct {
	next  time.Time
	fails int // in a row
}

// gaveUp: peerCacheMaxFails in a row, not asked again while connected.
func (f fetchState) gaveUp() bool { return f.fails >= peerCacheMaxFails }

// due reports whether the record may be fetched at now.
func (f fetchState) due(now time.Time) bool { return !f.gaveUp() && !now.Before(f.next) }

// mayFetch reports whether the record may be fetched at now; a new
// connection (up) tries a peer given up on once more.
func (f fetchState) mayFetch(now time.Time, up bool) bool { return f.due(now) || (up && f.gaveUp()) }

// failed is the state after one more failed fetch at now.
func (f fetchState) failed(now time.Time) fetchState {
	f.fails++
	if !f.gaveUp() {
		f.next = now.Add(peerCacheRetry << (f.fails - 1))
	}
	return f
}

// PeerCacheStatus is the peer cache as `status` shows it.
type PeerCacheStatus struct {
	Path  string `json:"path"`
	Count int    `json:"count"`
	Max   int    `json:"max"`
	// Loaded and Refused are what the file gave at start; LoadError why it
	// was not used.
	Loaded    int    `json:"loaded"`
	Refused   int    `json:"refused"`
	LoadError string `json:"load_error,omitempty"`
	Saves     uint64 `json:"saves"`
	// SaveErrors, QueueDropped (new peers not cached: the queue was full)
	// and FetchFailed (a peer's record could not be fetched) count drops.
	SaveErrors   uint64 `json:"save_errors"`
	QueueDropped uint64 `json:"queue_dropped"`
	FetchFailed  uint64 `json:"fetch_failed"`
	// Rejoins counts rounds of dialing cached peers because no peer was
	// connected; Rejoined the cached peers reached that way.
	Rejoins  uint64 `json:"rejoins"`
	Rejoined uint64 `json:"rejoined"`
}

// initPeerCache loads the cache file. An unreadable or malformed file costs
// one warning and the node starts without it (the next save replaces it);
// nothing else is ever written or removed.
func (n *Node) initPeerCache() {
	pc := &n.pcache
	if n.cfg.PeerCache == "" {
		return
	}
	pc.path = n.cfg.PeerCache
	pc.cache = peercache.New(peercache.DefaultMax, n.cfg.PoWBits)
	pc.up = make(chan pki.Identity, peerCacheQueue)
	pc.fetched = make(map[pki.Identity]fetchState)
	st, err := pc.cache.Load(pc.path)
	if err != nil {
		pc.cache = peercache.New(peercache.DefaultMax, n.cfg.PoWBits) // nothing of a bad file
		pc.loadErr = err.Error()
		n.cfg.Logger.Warn("peer cache unreadable: starting without it (it is rewritten once peers are reached)", "path", pc.path, "err", err)
	} else {
		pc.loaded, pc.refused = st.Loaded, st.Refused
		if st.Loaded > 0 || st.Refused > 0 {
			n.cfg.Logger.Info("peer cache loaded", "path", pc.path, "peers", st.Loaded, "refused", st.Refused)
		}
	}
	n.goLoop(n.peerCacheKeeper)
}

// cacheReached tells the keeper that p's connection came up (peerUp).
func (n *Node) cacheReached(id pki.Identity) {
	if n.pcache.cache == nil {
		return
	}
	select {
	case n.pcache.up <- id:
	default:
		n.pcache.queueDropped.Add(1)
	}
}

// PeerCache returns the peer cache's status (nil without one).
func (n *Node) PeerCache() *PeerCacheStatus {
	pc := &n.pcache
	if pc.cache == nil {
		return nil
	}
	return &PeerCacheStatus{
		Path: pc.path, Count: pc.cache.Len(), Max: peercache.DefaultMax,
		Loaded: pc.loaded, Refused: pc.refused, LoadError: pc.loadErr,
		Saves: pc.saves.Load(), SaveErrors: pc.saveErrors.Load(), QueueDropped: pc.queueDropped.Load(),
		FetchFailed: pc.fetchFailed.Load(), Rejoins: pc.rejoins.Load(), Rejoined: pc.rejoined.Load(),
	}
}

// peerCacheKeeper is the keeper goroutine (see above). It saves a changed
// cache once more when the node closes.
func (n *Node) peerCacheKeeper() {
	pc := &n.pcache
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	dirty := false
	var lastSave, lastRejoin, lastSweep time.Time
	sweepEvery := peerCacheSweep
	var rejoining sync.WaitGroup
	defer rejoining.Wait()
	save := func() {
		if err := pc.cache.Save(pc.path); err != nil {
			pc.saveErrors.Add(1)
			n.cfg.Logger.Warn("cannot save the peer cache", "err", err)
		} else {
			pc.saves.Add(1)
		}
		dirty, lastSave = false, time.Now()
	}
	busy := make(chan struct{}, 1) // one rejoin round at a time
	for {
		select {
		case <-n.ctx.Done():
			if dirty {
				save()
			}
			return
		case id := <-pc.up:
			if n.fetchRecord(id, true) {
				dirty = true
			}
		case now := <-tk.C:
			if dirty && now.Sub(lastSave) >= peerCacheSaveEvery {
				save()
			}
			if now.Sub(lastSweep) >= sweepEvery {
				lastSweep = now
				snap := n.peers.Snapshot()
				for id, f := range pc.fetched {
					// Gone, and due or given up: its next connection
					// starts afresh (bounds the map by the connections).
					if snap.Peer(id) == nil && (f.gaveUp() || f.due(now)) {
						delete(pc.fetched, id)
					}
				}
				// Peers whose fetch failed or whose peerUp was dropped,
				// while the cache has room: a full one takes new peers as
				// they connect (peerUp), and a node with a thousand peers
				// otherwise looked each up again every peerCacheRefresh.
				budget, tried, got := peerCacheSweepMax, 0, 0
				for p := range snap.All() {
					if pc.cache.Len() >= pc.cache.Max() || n.ctx.Err() != nil {
						break
					}
					if !pc.fetched[p.ID].mayFetch(now, false) || !p.Routable {
						continue
					}
					if budget--; budget < 0 {
						break
					}
					tried++
					if n.fetchRecord(p.ID, false) {
						dirty = true
						got++
					}
				}
				sweepEvery = nextSweep(sweepEvery, tried, got)
			}
			if n.peers.Snapshot().Len() == 0 && len(n.cfg.Bootstrap) > 0 && now.Sub(n.started) > rejoinAfter &&
				now.Sub(lastRejoin) > rejoinEvery && pc.cache.Len() > 0 {
				select {
				case busy <- struct{}{}:
					lastRejoin = now
					rejoining.Add(1)
					go func() {
						defer rejoining.Done()
						defer func() { <-busy }()
						n.rejoinFromCache()
					}()
				default:
				}
			}
		}
	}
}

// fetchRecord fetches id's signed record (a DHT lookup) and caches it,
// unless it was fetched recently or its fetches failed (fetchState); a
// new connection (up) tries once more a peer given up on. It reports
// whether the cache changed.
func (n *Node) fetchRecord(id pki.Identity, up bool) bool {
	pc := &n.pcache
	if n.dht == nil {
		return false
	}
	f := pc.fetched[id] // the zero state (never asked) is due
	if !f.mayFetch(time.Now(), up) {
		return false
	}
	// The DHT join may still be under way: wait for it (bounded) so the
	// first peers are cached too.
	ctx, cancel := context.WithTimeout(n.ctx, peerCacheResolve)
	defer cancel()
	n.awaitJoin(ctx)
	rec, err := n.dht.Resolve(ctx, id)
	if err == nil {
		err = pc.cache.Add(rec, time.Now())
	}
	if err != nil {
		pc.fetchFailed.Add(1)
		pc.fetched[id] = f.failed(time.Now())
		return false
	}
	pc.fetched[id] = fetchState{next: time.Now().Add(peerCacheRefresh)}
	return true
}

// nextSweep is the wait before the next sweep, after one that tried
// fetches and got that many records: a sweep whose every fetch failed
// doubles it (up to peerCacheRefresh), one that got a record resets it.
// Each peer backs off on its own (fetchState), but with a thousand
// connected peers that publish no record the sweep's budget, not their
// backoff, set the rate: 8 failing lookups every 5 s for the better part
// of an hour.
func nextSweep(cur time.Duration, tried, got int) time.Duration {
	switch {
	case got > 0:
		return peerCacheSweep
	case tried > 0:
		return min(2*cur, peerCacheRefresh)
	}
	return cur
}

// rejoinFromCache dials the cached peers, most recently reached first,
// rejoinParallel at a time, until one round has tried them all. The DHT
// join (dhtJoin) then bootstraps from whoever answered.
func (n *Node) rejoinFromCache() {
	pc := &n.pcache
	pc.rejoins.Add(1)
	cached := pc.cache.Peers()
	n.cfg.Logger.Info("no peer connected: rejoining through the peer cache", "peers", len(cached))
	sem := make(chan struct{}, rejoinParallel)
	var wg sync.WaitGroup
	for _, p := range cached {
		select {
		case sem <- struct{}{}:
		case <-n.ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(n.ctx, rejoinDial)
			defer cancel()
			r := p.Record
			if n.nat.Connect(ctx, r.Identity, r.Addrs, r.Relays, false) == nil {
				pc.rejoined.Add(1)
			}
		}()
	}
	wg.Wait()
}
