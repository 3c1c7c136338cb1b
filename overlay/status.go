package overlay

import (
	"sort"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/relay/server"
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
	RxBytes   uint64        `json:"rx_bytes"`
	RxPackets uint64        `json:"rx_packets"`
	// From the QUIC connection: packets it declared lost and its
	// congestion window.
	QUICLost uint64 `json:"quic_packets_lost"`
	QUICCwnd uint64 `json:"quic_cwnd_bytes"`
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
	n.mu.RLock()
	peers := make([]*peer, 0, len(n.peers))
	for _, p := range n.peers {
		peers = append(peers, p)
	}
	n.mu.RUnlock()
	for _, p := range peers {
		cst := p.conn.ConnectionStats()
		ps := PeerStatus{
			Identity:  p.id.String(),
			Address:   p.addr.String(),
			SPIFFEID:  p.spiffeID,
			Outbound:  p.outbound,
			Since:     p.since,
			RTT:       cst.SmoothedRTT,
			QUICLost:  cst.PacketsLost,
			QUICCwnd:  cst.CongestionWindow,
			TxBytes:   p.txBytes.Load(),
			TxPackets: p.txPkts.Load(),
			RxBytes:   p.rxBytes.Load(),
			RxPackets: p.rxPkts.Load(),
		}
		if pi, ok := n.sock.Path(p.id); ok {
			ps.Remote, ps.Confirmed = pi.Current.String(), pi.Confirmed
		}
		n.memberPeerStatus(p, &ps)
		ps.Paths, ps.PathSwitches = n.sock.Paths(p.id)
		if len(ps.Paths) > 0 && ps.Paths[0].Current {
			ps.Path = &ps.Paths[0]
		}
		s.Peers = append(s.Peers, ps)
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Identity < s.Peers[j].Identity })
	c := &n.stats
	rs := n.rpc.Stats()
	s.Drops = map[string]uint64{
		"tx_not_ipv6":       c.TxNotIPv6.Load(),
		"tx_not_overlay":    c.TxNotOverlay.Load(),
		"tx_no_peer":        c.TxNoPeer.Load(),
		"tx_too_big":        c.TxTooBig.Load(),
		"tx_send_error":     c.TxSendError.Load(),
		"rx_malformed":      c.RxMalformed.Load(),
		"rx_spoofed_source": c.RxSpoofedSource.Load(),
		"rx_not_for_us":     c.RxNotForUs.Load(),
		"device_read_error": c.DevReadErrors.Load(),
		"device_write_err":  c.DevWriteErrors.Load(),
		"handshake_refused": c.HandshakeRefused.Load(),
		"tx_resolve_failed": c.TxResolveFailed.Load(),
		"resolve_busy":      c.ResolveBusy.Load(),
		"rpc_refused":       rs.Refused,
		"rpc_too_large":     rs.TooLarge,
		"rpc_timeouts":      rs.Timeouts,
		"rpc_stream_errors": rs.StreamErrors,
		"app_no_handler":    c.AppNoHandler.Load(),
		"app_queue_full":    c.AppQueueFull.Load(),
		"relay_refused":     c.RelayRefused.Load(),
		"punch_refused":     c.PunchRefused.Load(),
		"dialback_busy":     c.DialBackBusy.Load(),
		"dial_addr_refused": c.DialAddrRefused.Load(),
		"icmp_rate_limited": c.ICMPRateLimited.Load(),

		// Requests reset for buffering too much: see rpc.Config.PeerBudget.
		"rpc_over_peer_budget": rs.OverPeerBudget,
		"rpc_over_node_budget": rs.OverNodeBudget,
		"rpc_budget_preempted": rs.Preempted,
		"spiffe_refused":       c.SPIFFERefused.Load(),
	}
	s.Counters = map[string]uint64{
		"handshakes":            c.Handshakes.Load(),
		"pending_delivered":     c.PendingDelivered.Load(),
		"duplicate_conns":       c.DuplicateConns.Load(),
		"resolve_ok":            c.ResolveOK.Load(),
		"resolve_failed":        c.ResolveFailed.Load(),
		"rpc_requests":          rs.Requests,
		"rpc_responses":         rs.Responses,
		"rpc_handler_errors":    rs.HandlerErrors,
		"rpc_abandoned":         rs.Abandoned,
		"punches":               c.Punches.Load(),
		"peers_evicted_lru":     c.PeersEvicted.Load(),
		"peers_evicted_idle":    c.PeersIdleEvicted.Load(),
		"icmp_unreachable_sent": c.ICMPUnreachSent.Load(),

		"rpc_buffered_bytes": uint64(rs.Buffered), // a gauge: request bytes arriving now
	}
	s.Refusals = make(map[string]uint64, numRefusals)
	for r := range numRefusals {
		s.Refusals[refusalNames[r]] = n.refusals[r].Load()
	}
	s.SPIFFEID, s.CA = n.SPIFFEID(), n.CAStats()
	s.Members = n.membersStatus()
	s.NAT = n.NAT()
	s.Relay = n.RelayStats()
	if n.dht != nil {
		ds := n.dht.Stats()
		s.DHT = &ds
	}
	return s
}
