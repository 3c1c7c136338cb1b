package nodesim

import (
	"cmp"
	"fmt"
	"math"
	"path"
	"runtime"
	"slices"
	"strings"
)

// Heap attribution. The live heap after GC is split into components by the
// heap profile the runtime keeps anyway (runtime.MemProfile): every sampled
// allocation still in use is charged to the component of the innermost
// frame of its stack that lies in a package we know. The profile samples
// one allocation per MemProfileRate bytes on average; Breakdown scales the
// samples back up as pprof does, so the components add up to about the
// live heap (the rest is "other": the runtime, the test harness).

// component names one part of a node's memory in the figures.
type component string

// The components of the breakdown, in the order SCALE.md lists them.
const (
	compDHTTable   component = "dht: routing table"
	compDHTStore   component = "dht: record store"
	compDHTTiers   component = "dht: RTT tiers"
	compDHTOther   component = "dht: other (lookups, rate limits)"
	compIdentities component = "dht: identity cache (shared by all nodes)"
	compGossipPeer component = "gossip: per-peer state (queues, limits, IDONTWANT)"
	compGossipScr  component = "gossip: peer scores"
	compGossipSeen component = "gossip: message dedup (seen windows)"
	compGossipMsgs component = "gossip: message cache"
	compGossipTop  component = "gossip: topic peers, meshes, backoffs"
	compGossipSubs component = "gossip: subscription buffers"
	compGossipOth  component = "gossip: per-router queues and other"
	compPeerTable  component = "peer table (connection cache)"
	compSim        component = "simulator (keys, endpoints, harness)"
	compGoroutines component = "goroutine descriptors"
	compOther      component = "other (runtime, unattributed)"
)

var componentOrder = []component{
	compDHTTable, compDHTStore, compDHTTiers, compDHTOther, compIdentities,
	compGossipPeer, compGossipScr, compGossipSeen, compGossipMsgs, compGossipTop, compGossipSubs, compGossipOth,
	compPeerTable, compSim, compGoroutines, compOther,
}

const modulePrefix = "github.com/korium/korium-tun/"

// classify returns the component of one frame, or "" when the frame says
// nothing (the runtime, the standard library): the caller then looks at
// the next frame out.
func classify(f runtime.Frame) component {
	fn := f.Function
	if fn == "runtime.malg" {
		// A goroutine's descriptor; the profile cannot say whose.
		return compGoroutines
	}
	if !strings.HasPrefix(fn, modulePrefix) {
		return ""
	}
	fn = strings.TrimPrefix(fn, modulePrefix)
	file := path.Base(f.File)
	switch {
	case strings.HasPrefix(fn, "dht."):
		switch file {
		case "table.go":
			return compDHTTable
		case "store.go", "record.go":
			return compDHTStore
		case "tier.go", "latency.go":
			return compDHTTiers
		case "idcache.go":
			return compIdentities
		}
		return compDHTOther
	case strings.HasPrefix(fn, "gossipsub."):
		return classifyGossip(fn)
	case strings.HasPrefix(fn, "internal/nodesim."):
		for _, f := range []string{"addLocked", "removeLocked", "touchLocked", "connect"} {
			if strings.HasSuffix(fn, f) {
				return compPeerTable
			}
		}
		return compSim
	case strings.HasPrefix(fn, "dht/simnet.") || strings.HasPrefix(fn, "pki."):
		return compSim
	}
	return ""
}

func classifyGossip(fn string) component {
	name := strings.TrimPrefix(fn, "gossipsub.")
	has := func(s ...string) bool {
		for _, x := range s {
			if strings.Contains(name, x) {
				return true
			}
		}
		return false
	}
	switch {
	case strings.HasSuffix(name, "(*Router).subscribe"):
		// Its channel of Config.SubscriptionSize messages.
		return compGossipSubs
	case has("seenCache"):
		return compGossipSeen
	case has("msgCache", "handleMessage", "publish", "handleIWant"):
		// The cached message, its encoding and the IWANT counters.
		return compGossipMsgs
	case has("addPeer", "sendQueue", "inbox", "dontWant", "fifoSet", "writer", "queue", "sendRPC", "EncodeRPCs", "AppendRPC"):
		return compGossipPeer
	case has("topicStats", "joinMesh", "Score", "score", "decay"):
		return compGossipScr
	case has("handleSub", "graft", "Graft", "prune", "Prune", "Backoff", "backoff", "heartbeat", "mesh", "leaveMesh"):
		return compGossipTop
	}
	return compGossipOth
}

// Breakdown is the live heap by component, in bytes.
type Breakdown map[component]uint64

// Total is the sum of all components.
func (b Breakdown) Total() uint64 {
	var t uint64
	for _, v := range b {
		t += v
	}
	return t
}

// heapBreakdown reads the heap profile after two GCs (the profile describes
// the heap as of the last completed cycle) and attributes in-use bytes.
func heapBreakdown() Breakdown {
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	rate := float64(runtime.MemProfileRate)
	out := make(Breakdown)
	for i := range recs {
		r := &recs[i]
		objs, bytes := r.InUseObjects(), r.InUseBytes()
		if objs <= 0 || bytes <= 0 {
			continue
		}
		out[attribute(r.Stack())] += uint64(scaleSample(objs, bytes, rate))
	}
	return out
}

// scaleSample undoes the profile's sampling: an allocation of s bytes is
// sampled with probability 1-exp(-s/rate) (pprof's scaleHeapSample).
func scaleSample(objs, bytes int64, rate float64) float64 {
	if rate <= 1 {
		return float64(bytes)
	}
	avg := float64(bytes) / float64(objs)
	return float64(bytes) / (1 - math.Exp(-avg/rate))
}

func attribute(stk []uintptr) component {
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		if c := classify(f); c != "" {
			return c
		}
		if !more {
			return compOther
		}
	}
}

// perNode divides every component by n.
func (b Breakdown) perNode(n int) Breakdown {
	out := make(Breakdown, len(b))
	for k, v := range b {
		out[k] = v / uint64(n)
	}
	return out
}

// sub returns b - base per component (never below zero).
func (b Breakdown) sub(base Breakdown) Breakdown {
	out := make(Breakdown, len(b))
	for k, v := range b {
		if w := base[k]; v > w {
			out[k] = v - w
		}
	}
	return out
}

// lines formats the breakdown, largest first within the fixed order's
// groups, as "component: N KiB".
func (b Breakdown) lines() []string {
	keys := slices.Clone(componentOrder)
	slices.SortStableFunc(keys, func(x, y component) int { return cmp.Compare(b[y], b[x]) })
	var out []string
	for _, k := range keys {
		if b[k] > 0 {
			out = append(out, fmt.Sprintf("%s: %.1f KiB", k, float64(b[k])/1024))
		}
	}
	return out
}
