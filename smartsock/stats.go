package smartsock

import "sync/atomic"

// Stats counts packets by fate. Read with Snapshot.
type Stats struct {
	RxQUIC, RxHello, RxRelay, TxHello                           atomic.Uint64
	DropUnknownSource, DropBadProbe, DropStaleHello, DropNoPath atomic.Uint64
	DropHelloRate, DropRelay, PathSwitches, TxReset, TxCalls    atomic.Uint64
	TxProbe, RxProbe, RxProbeReply, DropProbeMAC, DropProbeRate atomic.Uint64
	TxRelayed, RxRelayed, RxForwarded, RxDialBack, ProbeLost    atomic.Uint64
	TxForwardGSO, TxRefusal, RxRefusal, DropRefusalRate         atomic.Uint64
	AddrClaimRefused, AddrReassigned                            atomic.Uint64
	DropProbeUnknown, DropProbeSrcRate, DropHelloSrcRate        atomic.Uint64
	// Send errors taken as packet loss (see transient.go), by kind.
	TxErrNetUnreach, TxErrHostUnreach, TxErrNetDown atomic.Uint64
	TxErrAddrNotAvail, TxErrNoBufs, TxErrPerm       atomic.Uint64
	// The path loop's queue was full: the read path dropped what it had
	// to tell it; or the read path waited for it longer than loopWait.
	DropLoopFull, LoopSlow atomic.Uint64
}

// StatsSnapshot is a copy of Stats.
type StatsSnapshot struct {
	RxQUIC            uint64 `json:"rx_quic"`
	RxHello           uint64 `json:"rx_hello"`
	RxRelay           uint64 `json:"rx_relay_frames"`
	TxHello           uint64 `json:"tx_hello"`
	DropUnknownSource uint64 `json:"drop_unknown_source"`
	DropBadProbe      uint64 `json:"drop_bad_probe"`
	DropStaleHello    uint64 `json:"drop_stale_hello"`
	DropNoPath        uint64 `json:"drop_no_path"`
	DropHelloRate     uint64 `json:"drop_hello_rate"`
	DropRelay         uint64 `json:"drop_relay_unknown_session"`
	PathSwitches      uint64 `json:"path_switches"`
	TxReset           uint64 `json:"tx_stateless_reset"`
	TxCalls           uint64 `json:"tx_calls"`
	TxProbe           uint64 `json:"tx_probe"`
	RxProbe           uint64 `json:"rx_probe_request"`
	RxProbeReply      uint64 `json:"rx_probe_reply"`
	DropProbeMAC      uint64 `json:"drop_probe_bad_mac"`
	DropProbeRate     uint64 `json:"drop_probe_rate"`
	TxRelayed         uint64 `json:"tx_relayed"`
	RxRelayed         uint64 `json:"rx_relayed"`
	RxForwarded       uint64 `json:"relay_forwarded"`
	RxDialBack        uint64 `json:"rx_dialback"`
	ProbeLost         uint64 `json:"probe_lost"`
	TxForwardGSO      uint64 `json:"relay_forward_gso_writes"`
	// Refusals sent and received (refusal.go), and those not sent over
	// the refusal rate.
	TxRefusal       uint64 `json:"tx_refusal"`
	RxRefusal       uint64 `json:"rx_refusal"`
	DropRefusalRate uint64 `json:"drop_refusal_rate"`
	// A peer named an address (or relay session) another peer holds: its
	// path there stayed a candidate (refused), or took it from a weaker
	// holder (reassigned).
	AddrClaimRefused uint64 `json:"addr_claim_refused"`
	AddrReassigned   uint64 `json:"addr_reassigned"`
	// Probe requests from no connected peer; requests and hellos over
	// their source's budget (checked before the budgets all share).
	DropProbeUnknown uint64 `json:"drop_probe_unknown_peer"`
	DropProbeSrcRate uint64 `json:"drop_probe_source_rate"`
	DropHelloSrcRate uint64 `json:"drop_hello_source_rate"`
	// Send errors reported to quic-go as sent (lost) instead of failing
	// the connection: a link flap, a route change, a firewall.
	TxErrNetUnreach   uint64 `json:"tx_err_net_unreachable"`
	TxErrHostUnreach  uint64 `json:"tx_err_host_unreachable"`
	TxErrNetDown      uint64 `json:"tx_err_net_down"`
	TxErrAddrNotAvail uint64 `json:"tx_err_addr_not_available"`
	TxErrNoBufs       uint64 `json:"tx_err_no_buffers"`
	TxErrPerm         uint64 `json:"tx_err_not_permitted"`
	// The path loop's queue was full (a probe, hello or handshake packet
	// dropped), or the read path waited for the loop longer than loopWait
	// (see demux.go).
	DropLoopFull uint64 `json:"drop_loop_full"`
	LoopSlow     uint64 `json:"loop_slow"`
}

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() StatsSnapshot {
	s := &c.stats
	return StatsSnapshot{
		RxQUIC: s.RxQUIC.Load(), RxHello: s.RxHello.Load(), RxRelay: s.RxRelay.Load(), TxHello: s.TxHello.Load(),
		DropUnknownSource: s.DropUnknownSource.Load(), DropBadProbe: s.DropBadProbe.Load(),
		DropStaleHello: s.DropStaleHello.Load(), DropNoPath: s.DropNoPath.Load(),
		DropHelloRate: s.DropHelloRate.Load(), DropRelay: s.DropRelay.Load(), PathSwitches: s.PathSwitches.Load(), TxReset: s.TxReset.Load(), TxCalls: s.TxCalls.Load(),
		TxProbe: s.TxProbe.Load(), RxProbe: s.RxProbe.Load(), RxProbeReply: s.RxProbeReply.Load(), DropProbeMAC: s.DropProbeMAC.Load(),
		DropProbeRate: s.DropProbeRate.Load(), TxRelayed: s.TxRelayed.Load(), RxRelayed: s.RxRelayed.Load(), RxForwarded: s.RxForwarded.Load(),
		RxDialBack: s.RxDialBack.Load(), ProbeLost: s.ProbeLost.Load(), TxForwardGSO: s.TxForwardGSO.Load(),
		TxRefusal: s.TxRefusal.Load(), RxRefusal: s.RxRefusal.Load(), DropRefusalRate: s.DropRefusalRate.Load(),
		AddrClaimRefused: s.AddrClaimRefused.Load(), AddrReassigned: s.AddrReassigned.Load(),
		DropProbeUnknown: s.DropProbeUnknown.Load(), DropProbeSrcRate: s.DropProbeSrcRate.Load(), DropHelloSrcRate: s.DropHelloSrcRate.Load(),
		TxErrNetUnreach: s.TxErrNetUnreach.Load(), TxErrHostUnreach: s.TxErrHostUnreach.Load(), TxErrNetDown: s.TxErrNetDown.Load(),
		TxErrAddrNotAvail: s.TxErrAddrNotAvail.Load(), TxErrNoBufs: s.TxErrNoBufs.Load(), TxErrPerm: s.TxErrPerm.Load(),
		DropLoopFull: s.DropLoopFull.Load(), LoopSlow: s.LoopSlow.Load(),
	}
}
