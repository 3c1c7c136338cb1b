package overlay

import (
	"sort"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/rpc"
	"github.com/korium/korium-tun/smartsock"
)

// PeerStatus describes one connected peer.
type PeerStatus struct {
	Identity  string        `json:"identity"`
	Address   string        `json:"address"`
	SPIFFEID  string        `json:"spiffe_id,omitempty"`
	Remote    string        `json:"remote"`
	Confirmed bool          `json:"path_confirmed"`
	Outbound  bool          `json:"outbound"`
	Since     time.Time     `json:"since"`
	RTT       time.Duration `json:"rtt_ns"`
	TxBytes   uint64        `json:"tx_bytes"`
	TxPackets uint64        `json:"tx_packets"`
	// TxDropped counts packets its send queue lost because the peer's
	// connection could not take them (congested or dead).
	TxDropped uint64 `json:"tx_queue_dropped"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	// From the QUIC connection: packets it declared lost and its
	// congestion window.
	QUICLost uint64 `json:"quic_packets_lost"`
	QUICCwnd uint64 `json:"quic_cwnd_bytes"`
	// RxQueueDropped: datagrams from the peer that quic-go dropped because
	// its receive queue (1,024) was full: the datapath fell behind.
	RxQueueDropped uint64 `json:"rx_quic_queue_dropped"`
	// Path is the path traffic takes now; Paths lists every known one
	// (current first) and PathSwitches counts moves between them.
	Path         *smartsock.PathStatus  `json:"path,omitempty"`
	Paths        []smartsock.PathStatus `json:"paths"`
	PathSwitches uint64                 `json:"path_switches"`

	// Membership is "member", "enrollee" or "" (see MembersConfig), and
	// CertNotAfter when a member's certificate expires.
	Membership   string     `json:"membership,omitempty"`
	CertNotAfter *time.Time `json:"cert_not_after,omitempty"`
}

// Status is a snapshot of the node for `korium-tun status`.
type Status struct {
	Identity  string                  `json:"identity"`
	Address   string                  `json:"address"`
	Listen    string                  `json:"listen"`
	MTU       int                     `json:"mtu"`
	Uptime    time.Duration           `json:"uptime_ns"`
	Peers     []PeerStatus            `json:"peers"`
	Drops     map[string]uint64       `json:"drops"`
	Counters  map[string]uint64       `json:"counters"`
	Refusals  map[string]uint64       `json:"refusals"` // by reason: we_refused_* (their sum is drops.handshake_refused), refused_us_*
	SmartSock smartsock.StatsSnapshot `json:"smartsock"`
	DHT       *dht.Stats              `json:"dht,omitempty"`
	NAT       NATStatus               `json:"nat"`
	Relay     *server.Stats           `json:"relay,omitempty"`
	SPIFFEID  string                  `json:"spiffe_id,omitempty"`
	CA        *tca.Stats              `json:"ca,omitempty"`
	Members   *MembersStatus          `json:"members,omitempty"`
	PeerCache *PeerCacheStatus        `json:"peer_cache,omitempty"`
	Firewall  *firewall.Stats         `json:"firewall,omitempty"` // nil without a firewall
}

// Status returns a snapshot of peers and counters.
func (n *Node) Status() Status {
	s := Status{
		Identity:  n.id.String(),
		Address:   n.addr.String(),
		Listen:    n.LocalAddr().String(),
		MTU:       n.cfg.MTU,
		Uptime:    time.Since(n.started),
		SmartSock: n.sock.Stats(),
	}
	for p := range n.peers.Snapshot().All() {
		cst := p.Conn.ConnectionStats()
		ps := PeerStatus{
			Identity:       p.ID.String(),
			Address:        p.Addr.String(),
			SPIFFEID:       p.SPIFFEID,
			Outbound:       p.Outbound,
			Since:          p.Since,
			RTT:            cst.SmoothedRTT,
			QUICLost:       cst.PacketsLost,
			QUICCwnd:       cst.CongestionWindow,
			RxQueueDropped: cst.DatagramsDropped,
			TxBytes:        p.TxBytes.Load(),
			TxPackets:      p.TxPackets.Load(),
			TxDropped:      p.TxDropped.Load(),
			RxBytes:        p.RxBytes.Load(),
			RxPackets:      p.RxPackets.Load(),
		}
		if pi, ok := n.sock.Path(p.ID); ok {
			ps.Remote, ps.Confirmed = pi.Current.String(), pi.Confirmed
		}
		n.memberPeerStatus(p, &ps)
		ps.Paths, ps.PathSwitches = n.sock.Paths(p.ID)
		if len(ps.Paths) > 0 && ps.Paths[0].Current {
			ps.Path = &ps.Paths[0]
		}
		s.Peers = append(s.Peers, ps)
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Identity < s.Peers[j].Identity })
	c, d, pc, nc, mc := &n.stats, &n.dp.Counters, &n.peers.Counters, &n.nat.Counters, &n.nat.Mesh
	rxQueueFull := c.RxQUICQueueFullGone.Load()
	for _, ps := range s.Peers {
		rxQueueFull += ps.RxQueueDropped
	}
	rs := n.rpc.Stats()
	s.Drops = map[string]uint64{
		"tx_not_ipv6":      d.TxNotIPv6.Load(),
		"tx_not_overlay":   d.TxNotOverlay.Load(),
		"tx_no_peer":       d.TxNoPeer.Load(),
		"tx_too_big":       d.TxTooBig.Load(),
		"tx_send_error":    d.TxSendError.Load(),
		"tx_queue_dropped": d.TxQueueDropped.Load(), // a peer's send queue was full: its oldest packet went
		"tx_queue_full":    d.TxQueueFull.Load(),    // every send queue together was full
		// Of tx_queue_dropped, why the device reader did not wait for room.
		"tx_queue_stalled":     d.TxQueueStalled.Load(),
		"tx_queue_over_budget": d.TxQueueOverBudget.Load(),
		"rx_malformed":         d.RxMalformed.Load(),
		"rx_spoofed_source":    d.RxSpoofedSource.Load(),
		"rx_not_for_us":        d.RxNotForUs.Load(),
		"rx_not_routable":      d.RxNotRoutable.Load(),
		"rx_quic_queue_full":   rxQueueFull, // quic-go's receive queue was full: the datapath fell behind
		"device_read_error":    d.DevReadErrors.Load(),
		"device_write_err":     d.DevWriteErrors.Load(),
		"handshake_refused":    c.HandshakeRefused.Load(),
		"tx_resolve_failed":    d.TxResolveFailed.Load(),
		"resolve_busy":         d.ResolveBusy.Load(),
		"rpc_refused":          rs.Refused,
		"rpc_too_large":        rs.TooLarge,
		"rpc_timeouts":         rs.Timeouts,
		"rpc_stream_errors":    rs.StreamErrors,
		"app_no_handler":       c.AppNoHandler.Load(),
		"app_queue_full":       c.AppQueueFull.Load(),
		"relay_refused":        nc.RelayRefused.Load(),
		"punch_refused":        nc.PunchRefused.Load(),
		"dialback_busy":        nc.DialBackBusy.Load(),
		"dial_addr_refused":    nc.DialAddrRefused.Load(),
		// Mesh relaying (nat/mesh.go), by reason.
		"mesh_signal_malformed": mc.SignalMalformed.Load(),
		"mesh_signal_rate":      mc.SignalRate.Load(),
		"mesh_signal_ignored":   mc.SignalIgnored.Load(),
		"mesh_attempts_busy":    mc.AttemptsBusy.Load(),
		"mesh_allow_evicted":    mc.AllowEvicted.Load(),
		"mesh_connect_rate":     mc.ConnectRate.Load(),
		"app_signals_dropped":   c.AppSignalsDropped.Load(),
		"icmp_rate_limited":     d.ICMPRateLimited.Load(),
		"icmp_queue_full":       d.ICMPQueueFull.Load(),

		// Requests reset for buffering too much: see rpc.Config.PeerBudget.
		"rpc_over_peer_budget": rs.OverPeerBudget,
		"rpc_over_node_budget": rs.OverNodeBudget,
		"rpc_budget_preempted": rs.Preempted,
		"spiffe_refused":       c.SPIFFERefused.Load(),
	}
	s.Counters = map[string]uint64{
		"handshakes":            pc.Handshakes.Load(),
		"pending_delivered":     d.PendingDelivered.Load(),
		"duplicate_conns":       pc.DuplicateConns.Load(),
		"resolve_ok":            d.ResolveOK.Load(),
		"resolve_failed":        d.ResolveFailed.Load(),
		"rpc_requests":          rs.Requests,
		"rpc_requests_dht":      rs.ByProto[rpc.ProtoDHT],
		"rpc_requests_gossip":   rs.ByProto[rpc.ProtoGossip],
		"rpc_requests_relay":    rs.ByProto[rpc.ProtoRelay], // configure_nat, punches, relay sessions
		"rpc_requests_app":      rs.ByProto[rpc.ProtoApp],
		"rpc_requests_ca":       rs.ByProto[rpc.ProtoCA],
		"rpc_responses":         rs.Responses,
		"rpc_handler_errors":    rs.HandlerErrors,
		"rpc_abandoned":         rs.Abandoned,
		"punches":               nc.Punches.Load(),
		"mesh_signals_sent":     mc.SignalsSent.Load(),
		"mesh_signals_received": mc.SignalsReceived.Load(),
		"mesh_attempts":         mc.Attempts.Load(),
		"mesh_sessions":         mc.Sessions.Load(),
		"mesh_failed":           mc.Failed.Load(),
		"mesh_repairs":          mc.Repairs.Load(),
		"relay_repicks":         mc.Repicks.Load(),
		"peers_evicted_lru":     pc.Evicted.Load(),
		"peers_evicted_idle":    pc.IdleEvicted.Load(),
		"icmp_unreachable_sent": d.ICMPUnreachSent.Load(),
		// The device reader's waits for room in a full send queue.
		"tx_queue_waits":         d.TxQueueWaits.Load(),
		"tx_queue_wait_timeouts": d.TxQueueWaitTimeouts.Load(),
		"tx_queue_wait_ns":       d.TxQueueWaitNanos.Load(),
		"tx_direct":              d.TxDirect.Load(), // sent by the device reader itself
		"rx_direct":              d.RxDirect.Load(), // written to the device by the receiver itself

		"rpc_buffered_bytes": uint64(rs.Buffered), // a gauge: request bytes arriving now
	}
	s.Refusals = make(map[string]uint64, numRefusals)
	for r := range numRefusals {
		s.Refusals[refusalNames[r]] = n.refusals[r].Load()
	}
	s.SPIFFEID, s.CA = n.SPIFFEID(), n.CAStats()
	s.Members = n.membersStatus()
	if fs, ok := n.FirewallStats(); ok {
		s.Firewall = &fs
	}
	s.NAT = n.NAT()
	s.Relay = n.RelayStats()
	s.PeerCache = n.PeerCache()
	if n.dht != nil {
		ds := n.dht.Stats()
		s.DHT = &ds
	}
	return s
}
