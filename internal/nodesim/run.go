package nodesim

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/korium/korium-tun/dht/simnet"
	"github.com/korium/korium-tun/gossipsub"
)

// Scenario is the course of one run. Zero fields take the defaults written
// on them (those of the SCALE.md figures).
type Scenario struct {
	// Settle is the virtual time between bootstrap and the first figures:
	// meshes form, k, alpha and the tiers adapt. Default 1 minute.
	Settle time.Duration
	// Lookups is how many Resolve calls (20 in parallel) measure lookups
	// in the settled network. Default 2,000.
	Lookups int
	// Churn is how long the replacement of ChurnFraction of the nodes
	// takes (one departure and one arrival at a time, evenly spread), while
	// 5 workers resolve every 3 s and both topics get a message every
	// PublishEvery. Default 10 minutes; negative: no churn, no publishing
	// and no idle window (memory and lookups only).
	Churn         time.Duration
	ChurnFraction float64 // default 0.2
	PublishEvery  time.Duration
	// Quiet is the pause between churn and the idle window: the last
	// messages arrive, departed nodes' connections time out. Default 1
	// minute.
	Quiet time.Duration
	// Idle is the window, after churn and Quiet, over which
	// nothing but the nodes' own maintenance runs: it gives the messages
	// per node per second at idle. Default 10 minutes (the DHT's bucket
	// refresh interval, so each node refreshes once in it).
	Idle time.Duration
	// MeasureSettled takes the heap figures after Settle as well as at the
	// end (two more heap profiles; a few seconds at 10,000 nodes).
	MeasureSettled bool
	// HeapProfile, when set, receives a pprof heap profile at the end
	// measurement (go tool pprof -sample_index=inuse_space).
	HeapProfile io.Writer
	// SettledHeapProfile and ChurnHeapProfile, when set, receive one
	// after Settle (with MeasureSettled) and when the churn phase ends
	// (the live heap's peak at scale is there, not at the end): go tool
	// pprof -base of the one against the other shows what churn grows.
	SettledHeapProfile, ChurnHeapProfile io.Writer
	// Progress, when set, gets a line at the end of each phase (a run at
	// 10,000 nodes takes long; what was measured is not lost if it is
	// stopped).
	Progress io.Writer
}

func (sc *Scenario) fill() {
	if sc.Settle == 0 {
		sc.Settle = time.Minute
	}
	if sc.Lookups == 0 {
		sc.Lookups = 2000
	}
	if sc.Churn == 0 {
		sc.Churn = 10 * time.Minute
	}
	if sc.ChurnFraction == 0 {
		sc.ChurnFraction = 0.2
	}
	if sc.PublishEvery == 0 {
		sc.PublishEvery = 2 * time.Second
	}
	if sc.Quiet == 0 {
		sc.Quiet = time.Minute
	}
	if sc.Idle == 0 {
		sc.Idle = 10 * time.Minute
	}
}

// deliveryGrace: a subscriber counts for a message if it subscribed before
// the message was published and stayed at least this long after.
const deliveryGrace = 10 * time.Second

// Memory is the heap and stack of the nodes at one moment, per node.
type Memory struct {
	Nodes      int
	Heap       uint64    // live heap after GC, minus what was live before the nodes existed
	Breakdown  Breakdown // Heap by component
	Stack      uint64    // goroutine stacks in use
	Goroutines float64
	Conns      Dist // connections per node
	TopicPeers Dist // peers known in TopicAll
	Mesh       Dist // of which in our mesh
	Table      Dist // DHT routing table size
	Records    Dist // DHT records stored
}

// Dist is a distribution over the nodes.
type Dist struct {
	Mean          float64
	P50, P99, Max int
}

func dist(v []int) Dist {
	if len(v) == 0 {
		return Dist{}
	}
	slices.Sort(v)
	sum := 0
	for _, x := range v {
		sum += x
	}
	return Dist{Mean: float64(sum) / float64(len(v)), P50: v[pct(len(v), 50)], P99: v[pct(len(v), 99)], Max: v[len(v)-1]}
}

func pct(n, p int) int { return min(n-1, n*p/100) }

func (d Dist) String() string {
	return fmt.Sprintf("mean %.0f, p50 %d, p99 %d, max %d", d.Mean, d.P50, d.P99, d.Max)
}

// Delivery is how one topic's messages reached its subscribers.
type Delivery struct {
	Messages int
	Pairs    int     // (message, subscriber) pairs that should have been delivered
	Ratio    float64 // of those, delivered
	P50, P99 time.Duration
}

// Idle is the traffic of a node doing nothing but maintenance.
type Idle struct {
	Window     time.Duration
	DHTMsgs    float64 // DHT requests and responses sent, per node per second
	GossipRPCs float64 // gossip RPCs sent per node per second (each answered empty)
	Handshakes float64 // connections dialed per node per second
	CPUPerNode time.Duration
	KeepAlives float64 // QUIC keep-alive PINGs per node per second, derived (not simulated)
	Conns      float64 // connections per node, from which KeepAlives is derived
}

// Figures is the outcome of a run.
type Figures struct {
	N            int
	Settled, End Memory
	Lookups      simnet.Summary // in the settled network
	ChurnLookups simnet.Summary // during churn
	Replaced     int
	All, Subset  Delivery
	// ChurnGossipRPCs is the gossip RPCs per node per second while both
	// topics carried messages (during churn, which lasted ChurnTime).
	ChurnGossipRPCs float64
	ChurnTime       time.Duration
	Idle            Idle
	LRU, IdleEvict  int64 // connections closed by the cap and by idleness
	Handshakes      int64
	CPU             time.Duration // CPU time of the whole run (all goroutines of the process)
	Virtual         time.Duration
	Join            time.Duration // virtual time the bootstrap of all nodes took
}

// DefaultKeepAlive is the overlay's QUIC keep-alive period
// (overlay.DefaultKeepAlive, pinned by TestDefaultsAreTheNodes): an
// otherwise idle connection carries one PING (the client's; the server's
// waits a quarter longer and is pushed back by it) and its ACK at about
// this interval.
const DefaultKeepAlive = 15 * time.Second

// Run builds a network of cfg.N nodes and runs the scenario. It must run
// inside a synctest bubble.
func Run(cfg Config, sc Scenario) (Figures, error) {
	sc.fill()
	ctx := context.Background()
	cpu0 := cpuTime()
	start := time.Now()
	progress := func(format string, a ...any) {
		if sc.Progress != nil {
			fmt.Fprintf(sc.Progress, "nodesim N=%d t=%v cpu=%v: %s\n", cfg.N, time.Since(start).Round(time.Second),
				(cpuTime() - cpu0).Round(time.Second), fmt.Sprintf(format, a...))
		}
	}
	baseHeap, baseStack := heapStack()
	baseBreak := heapBreakdown()
	s, err := New(cfg)
	if err != nil {
		return Figures{}, err
	}
	defer s.Close()
	f := Figures{N: cfg.N}
	if err := s.Cl.Bootstrap(ctx); err != nil {
		return f, err
	}
	f.Join = time.Since(start)
	progress("joined")
	time.Sleep(sc.Settle)
	if sc.MeasureSettled {
		f.Settled = s.memory(baseHeap, baseStack, baseBreak)
		progress("settled: heap/node %.0f KiB, stacks/node %.0f KiB, connections %v", float64(f.Settled.Heap)/1024,
			float64(f.Settled.Stack)/1024, f.Settled.Conns)
		if sc.SettledHeapProfile != nil {
			if err := pprof.WriteHeapProfile(sc.SettledHeapProfile); err != nil {
				return f, err
			}
		}
	}
	f.Lookups = simnet.Summarize(s.Cl.Resolve(ctx, sc.Lookups, 20))
	progress("lookups: %v", f.Lookups)
	if sc.Churn < 0 {
		f.End = s.memory(baseHeap, baseStack, baseBreak)
		f.Virtual, f.CPU = time.Since(start), cpuTime()-cpu0
		return f, nil
	}

	// Churn, with lookups and publishing.
	f.Replaced = int(float64(cfg.N) * sc.ChurnFraction)
	done := make(chan struct{})
	var churnErr error
	go func() {
		defer close(done)
		churnErr = s.Cl.Churn(ctx, f.Replaced, sc.Churn/time.Duration(max(f.Replaced, 1)))
	}()
	gossip0, churn0 := s.GossipRPCs.Load(), time.Now()
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		s.PublishUntil(done, sc.PublishEvery)
	}()
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		s.watchChurn(done, 10*time.Second, progress)
	}()
	f.ChurnLookups = simnet.Summarize(s.Cl.ResolveUntil(ctx, done, 5, 3*time.Second))
	<-pubDone
	<-watchDone
	if sc.ChurnHeapProfile != nil {
		if err := pprof.WriteHeapProfile(sc.ChurnHeapProfile); err != nil {
			return f, err
		}
	}
	// The phase outlasts sc.Churn: the last newcomers are still joining.
	f.ChurnTime = time.Since(churn0)
	f.ChurnGossipRPCs = float64(s.GossipRPCs.Load()-gossip0) / f.ChurnTime.Seconds() / float64(cfg.N)
	if churnErr != nil {
		return f, churnErr
	}
	progress("churn: lookups %v", f.ChurnLookups)
	time.Sleep(sc.Quiet)

	// Idle.
	dht0, g0, h0, c0 := s.Net.Messages.Load(), s.GossipRPCs.Load(), s.Handshakes.Load(), cpuTime()
	time.Sleep(sc.Idle)
	secs := sc.Idle.Seconds() * float64(cfg.N)
	f.Idle = Idle{
		Window:     sc.Idle,
		DHTMsgs:    float64(s.Net.Messages.Load()-dht0) / secs,
		GossipRPCs: float64(s.GossipRPCs.Load()-g0) / secs,
		Handshakes: float64(s.Handshakes.Load()-h0) / secs,
		CPUPerNode: time.Duration(float64(cpuTime()-c0) / secs),
	}
	progress("idle done")
	f.End = s.memory(baseHeap, baseStack, baseBreak)
	if sc.HeapProfile != nil {
		if err := pprof.WriteHeapProfile(sc.HeapProfile); err != nil {
			return f, err
		}
	}
	f.Idle.Conns = f.End.Conns.Mean
	f.Idle.KeepAlives = f.End.Conns.Mean / DefaultKeepAlive.Seconds()
	f.All, f.Subset = s.delivery(TopicAll), s.delivery(TopicSubset)
	f.LRU, f.IdleEvict, f.Handshakes = s.EvictedLRU.Load(), s.EvictedIdle.Load(), s.Handshakes.Load()
	f.Virtual = time.Since(start)
	f.CPU = cpuTime() - cpu0
	return f, nil
}

// memory measures the live nodes.
func (s *Sim) memory(baseHeap, baseStack uint64, baseBreak Breakdown) Memory {
	s.mu.Lock()
	var nodes []*node
	for _, n := range s.nodes {
		nodes = append(nodes, n)
	}
	var conns []int
	for _, n := range nodes {
		conns = append(conns, len(n.conns))
	}
	s.mu.Unlock()
	var tp, mesh, table, recs []int
	for _, n := range nodes {
		peers := n.r.TopicPeers(TopicAll)
		in := 0
		for _, p := range peers {
			if p.InMesh {
				in++
			}
		}
		tp, mesh = append(tp, len(peers)), append(mesh, in)
	}
	for _, dn := range s.Cl.Nodes() {
		st := dn.DHT.Stats()
		table, recs = append(table, st.TableSize), append(recs, st.Records)
	}
	heap, stack := heapStack()
	n := len(nodes)
	return Memory{
		Nodes:      n,
		Heap:       (heap - min(heap, baseHeap)) / uint64(n),
		Breakdown:  heapBreakdown().sub(baseBreak).perNode(n),
		Stack:      (stack - min(stack, baseStack)) / uint64(n),
		Goroutines: float64(runtime.NumGoroutine()) / float64(n),
		Conns:      dist(conns),
		TopicPeers: dist(tp),
		Mesh:       dist(mesh),
		Table:      dist(table),
		Records:    dist(recs),
	}
}

// watchChurn prints, every interval until done is closed, the live heap
// (the collector's last mark, no collection of its own) and what the
// gossip routers hold and drop: where a run at scale grows is seen while
// it grows.
func (s *Sim) watchChurn(done <-chan struct{}, interval time.Duration, progress func(string, ...any)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		var routers []*gossipsub.Router
		for _, n := range s.nodes {
			routers = append(routers, n.r)
		}
		s.mu.Unlock()
		var st gossipsub.Stats
		for _, r := range routers {
			rs := r.Stats()
			st.DropSendQueue += rs.DropSendQueue
			st.DropSendError += rs.DropSendError
			st.RPCsSent += rs.RPCsSent
		}
		metrics.Read(sample)
		progress("churn: live heap %.2f GiB, %d nodes (%.0f KiB each); their gossip RPCs sent %d, send-queue drops %d, send errors %d",
			float64(sample[0].Value.Uint64())/(1<<30), len(routers), float64(sample[0].Value.Uint64())/1024/float64(max(len(routers), 1)),
			st.RPCsSent, st.DropSendQueue, st.DropSendError)
	}
}

func heapStack() (heap, stack uint64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse
}

// delivery counts, for each message of topic, the subscribers that were
// there for it (subscribed before it was published, still there
// deliveryGrace after) and how many of them got it.
func (s *Sim) delivery(topic string) Delivery {
	s.mu.Lock()
	members := slices.Clone(s.members)
	msgs := slices.Clone(s.msgs)
	joined := make([]time.Time, len(members))
	left := make([]time.Time, len(members))
	for i, m := range members {
		joined[i], left[i] = m.joinedAt, m.leftAt
	}
	s.mu.Unlock()
	s.recMu.Lock()
	defer s.recMu.Unlock()
	var d Delivery
	var lats []time.Duration
	got := make([]time.Duration, len(members))
	delivered := 0
	for _, p := range msgs {
		if p.topic != topic {
			continue
		}
		d.Messages++
		clear(got)
		for _, r := range p.recv {
			got[r.idx] = r.lat + 1 // +1: zero means not received
		}
		for i, m := range members {
			if i == p.from || topic == TopicSubset && !m.subset || joined[i].IsZero() || joined[i].After(p.at) ||
				!left[i].IsZero() && left[i].Before(p.at.Add(deliveryGrace)) {
				continue
			}
			d.Pairs++
			if got[i] > 0 {
				delivered++
				lats = append(lats, got[i]-1)
			}
		}
	}
	if d.Pairs > 0 {
		d.Ratio = float64(delivered) / float64(d.Pairs)
	}
	slices.Sort(lats)
	if len(lats) > 0 {
		d.P50, d.P99 = lats[pct(len(lats), 50)], lats[pct(len(lats), 99)]
	}
	return d
}

// Report is the figures as lines of text.
func (f Figures) Report() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	kib := func(v uint64) string { return fmt.Sprintf("%.0f KiB", float64(v)/1024) }
	p("N=%d: %d replaced by churn; virtual %v (joining %v), CPU %v", f.N, f.Replaced, f.Virtual.Round(time.Second), f.Join.Round(time.Second), f.CPU.Round(time.Second))
	for _, m := range []struct {
		name string
		m    Memory
	}{{"settled", f.Settled}, {"end", f.End}} {
		if m.m.Nodes == 0 {
			continue
		}
		p("memory (%s, %d nodes): heap/node %s, stacks/node %s, goroutines/node %.1f", m.name, m.m.Nodes, kib(m.m.Heap), kib(m.m.Stack), m.m.Goroutines)
		for _, l := range m.m.Breakdown.lines() {
			p("  %s", l)
		}
		p("  connections/node: %v", m.m.Conns)
		p("  topic peers (%s): %v; in mesh: %v", TopicAll, m.m.TopicPeers, m.m.Mesh)
		p("  DHT table: %v; records: %v", m.m.Table, m.m.Records)
	}
	p("lookups (settled): %v", f.Lookups)
	p("lookups (churn): %v", f.ChurnLookups)
	for _, d := range []struct {
		name string
		d    Delivery
	}{{TopicAll, f.All}, {TopicSubset, f.Subset}} {
		if d.d.Messages == 0 {
			continue
		}
		p("pubsub %q: %d messages, %d receiver pairs, delivered %.2f%%, latency p50 %v p99 %v", d.name, d.d.Messages, d.d.Pairs, 100*d.d.Ratio,
			d.d.P50.Round(time.Millisecond), d.d.P99.Round(time.Millisecond))
	}
	if f.All.Messages > 0 {
		p("gossip RPCs while publishing (churn, %v): %.1f/node/s", f.ChurnTime.Round(time.Second), f.ChurnGossipRPCs)
	}
	if f.Idle.Window == 0 {
		return b.String()
	}
	p("idle (%v): DHT msgs %.3f/node/s, gossip RPCs %.3f/node/s, handshakes %.4f/node/s, keep-alives %.1f/node/s (derived: %.0f connections / %v), CPU %v/node/s",
		f.Idle.Window, f.Idle.DHTMsgs, f.Idle.GossipRPCs, f.Idle.Handshakes, f.Idle.KeepAlives, f.Idle.Conns, DefaultKeepAlive, f.Idle.CPUPerNode.Round(time.Microsecond))
	p("connections: %d dialed, %d closed by the cap, %d closed idle", f.Handshakes, f.LRU, f.IdleEvict)
	return b.String()
}
