package main

import (
	"runtime/debug"
	"runtime/metrics"
	"strconv"
)

// upGCPercent is the collector's target of `korium-tun up` when the
// environment chooses none: a collection when the heap grew by a quarter
// over what the last one left live, not by all of it (Go's GOGC=100).
//
// The runtime keeps memory up to about its heap goal: at 1,000 idle peers
// the live heap is ~50 MB (17.7 MB of it the datapath's batch buffers,
// allocated but never touched, which still raise the goal), and at GOGC=100
// the node held 112-127 MiB resident, at 25 about 90 (scripts/scale.sh,
// SCALE.md). The cost is collector CPU in proportion to what the node
// allocates: an idle node allocates ~0.2 MB/s (a collection a minute at
// 1,000 peers), and the data path allocates nothing per packet.
//
// No memory limit is set: a node whose live heap outgrew it (more peers,
// relay sessions) would collect without pause, up to half its CPU.
const upGCPercent = 25

// applyGCDefaults sets upGCPercent unless the environment (getenv) sets
// GOGC or GOMEMLIMIT: who sets either manages the collector (the runtime
// has applied it already). It reports the setting in force, for the log.
func applyGCDefaults(getenv func(string) string) (gogc string) {
	if v := getenv("GOGC"); v != "" {
		return "GOGC=" + v + " (environment)"
	}
	if v := getenv("GOMEMLIMIT"); v != "" {
		return "GOMEMLIMIT=" + v + " (environment)"
	}
	debug.SetGCPercent(upGCPercent)
	return "GOGC=" + strconv.Itoa(upGCPercent) + " (korium-tun up's default; set GOGC or GOMEMLIMIT to choose)"
}

// gcSettings reads the collector's target and memory limit as the runtime
// has them (runtime/metrics: no side effect, unlike debug.SetGCPercent).
func gcSettings() (percent, limit uint64) {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}
