// Package metrics serves a node's figures in the Prometheus text format at
// /metrics. A Collector reads the node's snapshots (overlay.Status, the
// GossipSub and DNS counters) at scrape time, so the packages that count
// need no Prometheus code and the hot paths no extra work. Nothing is
// labelled by peer: peer identities are unbounded, so peers are counted by
// path kind and traffic is summed. It imports overlay and the packages
// whose snapshot types it reads, and github.com/prometheus/client_golang.
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/korium/korium-tun/dnsserver"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/overlay"
)

// Node is what the collector reads from the running node.
type Node interface {
	Status() overlay.Status
	GossipStats() (gossipsub.Stats, bool)
}

// Sources are the figures a Collector reports.
type Sources struct {
	Node    Node
	DNS     func() (dnsserver.Stats, bool) // nil or false: no DNS responder
	Names   func() int                     // nil: no names table
	Version string                         // for korium_build_info
	Commit  string
}

// Collector is a prometheus.Collector over Sources.
type Collector struct {
	src Sources

	mu    sync.Mutex // guards peers and gone: Collect may run concurrently
	peers map[connKey]traffic
	gone  traffic // of connections no longer in Status
}

// connKey names one connection: a peer that reconnects is a new one.
type connKey struct {
	id    string
	since int64
}

type traffic struct{ txBytes, txPkts, rxBytes, rxPkts uint64 }

func (t *traffic) add(o traffic) {
	t.txBytes += o.txBytes
	t.txPkts += o.txPkts
	t.rxBytes += o.rxBytes
	t.rxPkts += o.rxPkts
}

// NewCollector returns a Collector over src.
func NewCollector(src Sources) *Collector {
	return &Collector{src: src, peers: make(map[connKey]traffic)}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("korium_"+name, help, labels, nil)
}

var (
	dBuild        = desc("build_info", "The running korium-tun's version and commit (always 1).", "version", "commit")
	dUptime       = desc("uptime_seconds", "Seconds since the node started.")
	dPeers        = desc("peers", "Connected peers by the kind of path their traffic takes now (direct, relay, or none before a path is confirmed).", "path")
	dBytes        = desc("tunnel_bytes_total", "IP bytes carried through the tunnel, by direction (tx: to peers, rx: from peers).", "direction")
	dPackets      = desc("tunnel_packets_total", "IP packets carried through the tunnel, by direction.", "direction")
	dDrops        = desc("drops_total", "Things dropped, by the layer that dropped them and why.", "layer", "reason")
	dRefusals     = desc("refusals_total", "Peers' attempts refused, by reason.", "reason")
	dHandshakes   = desc("handshakes_total", "QUIC handshakes completed with peers, both directions.")
	dResolves     = desc("resolves_total", "Resolutions of unknown overlay addresses through the DHT, by result.", "result")
	dPathSwitches = desc("path_switches_total", "Moves of a peer's traffic from one path to another.")
	dDHTContacts  = desc("dht_contacts", "Contacts in the DHT routing table.")
	dDHTBuckets   = desc("dht_buckets", "Non-empty buckets of the DHT routing table.")
	dDHTRecords   = desc("dht_records", "Contact records the DHT stores.")
	dDHTRecBytes  = desc("dht_record_bytes", "Encoded size of the records the DHT stores.")
	dDHTLookups   = desc("dht_lookups_total", "Iterative DHT lookups started.")
	dDHTLookFail  = desc("dht_lookup_failures_total", "Iterative DHT lookups that failed.")
	dDHTLatency   = desc("dht_lookup_duration_seconds", "Latency of DHT lookups, finished or failed.")
	dDHTRequests  = desc("dht_requests_total", "DHT requests, by direction (in: answered for peers, out: sent).", "direction")
	dDHTReqFail   = desc("dht_request_failures_total", "Outbound DHT requests without a valid answer.")
	dGossipPub    = desc("gossip_published_total", "Pubsub messages this node published.")
	dGossipDeliv  = desc("gossip_delivered_total", "Pubsub messages delivered to a subscription of this node.")
	dGossipFwd    = desc("gossip_forwarded_total", "Pubsub message copies queued to peers.")
	dGossipDup    = desc("gossip_duplicates_total", "Pubsub messages received again.")
	dGossipScore  = desc("gossip_score_drops_total", "Pubsub RPCs dropped because their sender's score is below the graylist threshold.")
	dGossipPenal  = desc("gossip_behaviour_penalties_total", "Behaviour penalties given to pubsub peers (broken promises, flooding).")
	dRelaySess    = desc("relay_sessions", "Relay sessions this node serves now.")
	dRelayOpened  = desc("relay_sessions_opened_total", "Relay sessions opened by this node as a relay.")
	dRelayFrames  = desc("relay_forwarded_frames_total", "Frames this node forwarded as a relay.")
	dRelayBytes   = desc("relay_forwarded_bytes_total", "Bytes this node forwarded as a relay.")
	dNATChecked   = desc("nat_checked", "1 once the node has found out whether it is publicly reachable.")
	dNATPublic    = desc("nat_public", "1 if the node is publicly reachable, 0 if behind NAT (or not checked yet).")
	dNATRelays    = desc("nat_relays", "Relays this node publishes in its contact record (behind NAT).")
	dDNSQueries   = desc("dns_queries_total", "DNS queries to the node's responder, by outcome.", "result")
	dNames        = desc("names", "Names in the node's names table.")
	dFwPassed     = desc("firewall_passed_total", "Inbound packets the firewall let through, by why (flow, rule, default, icmp).", "reason")
	dFwFlows      = desc("firewall_flows", "Flows the firewall tracks now (expired ones not yet reclaimed included).")
	dFwEvicted    = desc("firewall_flows_evicted_total", "Live flows the firewall's full table pushed out for new ones.")
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dBuild, dUptime, dPeers, dBytes, dPackets, dDrops, dRefusals, dHandshakes,
		dResolves, dPathSwitches, dDHTContacts, dDHTBuckets, dDHTRecords, dDHTRecBytes, dDHTLookups, dDHTLookFail,
		dDHTLatency, dDHTRequests, dDHTReqFail, dGossipPub, dGossipDeliv, dGossipFwd, dGossipDup, dGossipScore,
		dGossipPenal, dRelaySess, dRelayOpened, dRelayFrames, dRelayBytes, dNATChecked, dNATPublic, dNATRelays,
		dDNSQueries, dNames, dFwPassed, dFwFlows, dFwEvicted} {
		ch <- d
	}
}

// refusalReasons moves these overlay drop reasons to korium_refusals_total.
var refusalReasons = map[string]string{
	"handshake_refused": "handshake_identity",
	"rpc_refused":       "rpc_stream_limit",
	"relay_refused":     "relay_request",
	"punch_refused":     "punch_request",
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(dBuild, 1, c.src.Version, c.src.Commit)
	st := c.src.Node.Status()
	gauge(dUptime, st.Uptime.Seconds())

	byPath := map[string]int{"direct": 0, "relay": 0, "none": 0}
	for _, p := range st.Peers {
		kind := "none"
		if p.Path != nil && (p.Path.Kind == "direct" || p.Path.Kind == "relay") {
			kind = p.Path.Kind
		}
		byPath[kind]++
	}
	for k, n := range byPath {
		gauge(dPeers, float64(n), k)
	}
	t := c.traffic(st.Peers)
	counter(dBytes, t.txBytes, "tx")
	counter(dBytes, t.rxBytes, "rx")
	counter(dPackets, t.txPkts, "tx")
	counter(dPackets, t.rxPkts, "rx")

	for reason, v := range st.Drops {
		if r, ok := refusalReasons[reason]; ok {
			counter(dRefusals, v, r)
			continue
		}
		counter(dDrops, v, "tunnel", reason)
	}
	for reason, v := range dropFields(st.SmartSock) {
		counter(dDrops, v, "smartsock", reason)
	}
	if fw := st.Firewall; fw != nil {
		for reason, v := range fw.Dropped {
			counter(dDrops, v, "firewall", reason)
		}
		for reason, v := range fw.Passed {
			counter(dFwPassed, v, reason)
		}
		gauge(dFwFlows, float64(fw.Flows))
		counter(dFwEvicted, fw.Evicted)
	}
	counter(dHandshakes, st.Counters["handshakes"])
	counter(dResolves, st.Counters["resolve_ok"], "ok")
	counter(dResolves, st.Counters["resolve_failed"], "failed")
	counter(dPathSwitches, st.SmartSock.PathSwitches)

	if d := st.DHT; d != nil {
		gauge(dDHTContacts, float64(d.TableSize))
		gauge(dDHTBuckets, float64(d.Buckets))
		gauge(dDHTRecords, float64(d.Records))
		gauge(dDHTRecBytes, float64(d.RecordBytes))
		counter(dDHTLookups, d.Lookups)
		counter(dDHTLookFail, d.LookupFailures)
		counter(dDHTRequests, d.Handled, "in")
		counter(dDHTRequests, d.Sent, "out")
		counter(dDHTReqFail, d.Failed)
		for reason, v := range d.Drops {
			counter(dDrops, v, "dht", reason)
		}
		h := d.LookupSeconds
		if len(h.Counts) == len(h.Bounds)+1 {
			buckets := make(map[float64]uint64, len(h.Bounds))
			var cum uint64
			for i, b := range h.Bounds {
				cum += h.Counts[i]
				buckets[b] = cum
			}
			ch <- prometheus.MustNewConstHistogram(dDHTLatency, h.Count, h.Sum, buckets)
		}
	}
	if g, ok := c.src.Node.GossipStats(); ok {
		counter(dGossipPub, g.Published)
		counter(dGossipDeliv, g.Delivered)
		counter(dGossipFwd, g.Forwarded)
		counter(dGossipDup, g.Duplicates)
		counter(dGossipScore, g.DropGraylisted)
		counter(dGossipPenal, g.BehaviourPenalties)
		for reason, v := range dropFields(g) {
			counter(dDrops, v, "gossip", reason)
		}
	}
	if r := st.Relay; r != nil {
		gauge(dRelaySess, float64(r.Sessions))
		counter(dRelayOpened, r.Opened)
		counter(dRelayFrames, r.ForwardedFrames)
		counter(dRelayBytes, r.ForwardedBytes)
		counter(dRefusals, r.RefusedSessions, "relay_session_limit")
		counter(dRefusals, r.RefusedPerIP, "relay_per_ip_limit")
		counter(dRefusals, r.RefusedSelf, "relay_self")
		counter(dRefusals, r.RefusedAddr, "relay_bad_address")
		for reason, v := range dropFields(*r) {
			counter(dDrops, v, "relay", reason)
		}
		counter(dDrops, r.Unknown, "relay", "unknown_session")
	}
	gauge(dNATChecked, b2f(st.NAT.Checked))
	gauge(dNATPublic, b2f(st.NAT.Public))
	gauge(dNATRelays, float64(len(st.NAT.Relays)))
	if c.src.DNS != nil {
		if s, ok := c.src.DNS(); ok {
			counter(dDNSQueries, s.Answered, "answered")
			counter(dDNSQueries, s.NoData, "no_data")
			counter(dDNSQueries, s.NXDomain, "nxdomain")
			counter(dDNSQueries, s.Refused, "refused_not_local")
			counter(dDNSQueries, s.RefusedZone, "refused_zone")
			counter(dDNSQueries, s.NotImpl, "not_implemented")
			counter(dDrops, s.Malformed, "dns", "malformed")
			counter(dDrops, s.RefuseLimited, "dns", "refusal_rate")
		}
	}
	if c.src.Names != nil {
		gauge(dNames, float64(c.src.Names()))
	}
}

// traffic sums the peers' counters, adding those of connections that went
// away since the last scrape, so the totals never go down. (Traffic of a
// connection between its last scrape and its end is not counted.)
func (c *Collector) traffic(peers []overlay.PeerStatus) traffic {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := make(map[connKey]traffic, len(peers))
	for _, p := range peers {
		cur[connKey{p.Identity, p.Since.UnixNano()}] = traffic{p.TxBytes, p.TxPackets, p.RxBytes, p.RxPackets}
	}
	for k, t := range c.peers {
		if _, ok := cur[k]; !ok {
			c.gone.add(t)
		}
	}
	c.peers = cur
	total := c.gone
	for _, t := range cur {
		total.add(t)
	}
	return total
}

// dropFields returns the uint64 fields named Drop* of a stats struct, by
// their snake_case reason (DropBadProbe -> bad_probe).
func dropFields(v any) map[string]uint64 {
	rv := reflect.ValueOf(v)
	out := make(map[string]uint64)
	for i := 0; i < rv.NumField(); i++ {
		f := rv.Type().Field(i)
		if !strings.HasPrefix(f.Name, "Drop") || len(f.Name) == 4 || f.Type.Kind() != reflect.Uint64 {
			continue
		}
		out[snake(strings.TrimPrefix(f.Name, "Drop"))] = rv.Field(i).Uint()
	}
	return out
}

// snake turns CamelCase (with initialisms: PerIP, MAC) into snake_case.
func snake(s string) string {
	var b strings.Builder
	r := []rune(s)
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 && (unicode.IsLower(r[i-1]) || (i+1 < len(r) && unicode.IsLower(r[i+1]))) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// NewRegistry returns a registry with the node's collector and the Go
// runtime and process collectors.
func NewRegistry(src Sources) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// ErrNotLoopback is returned by Listen for an address others could reach
// when public is false.
var ErrNotLoopback = errors.New("not a loopback address")

// Listen opens the metrics listener on addr (HOST:PORT, HOST an IP or
// "localhost"). Unless public, HOST must be a loopback address: the
// figures say who this node talks to and how much, and are served without
// authentication.
func Listen(addr string, public bool) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%q: want HOST:PORT, e.g. 127.0.0.1:9474", addr)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if host != "" && err != nil {
		return nil, fmt.Errorf("%q: HOST must be an IP address or localhost", addr)
	}
	if !public && (host == "" || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%s is %w: anyone who can reach it could read the node's figures; use 127.0.0.1:%s, or allow it with --metrics-public", addr, ErrNotLoopback, port)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%s is in use by another program: choose another port", addr)
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil {
			err = op.Err
		}
		return nil, fmt.Errorf("cannot listen on %s: %v", addr, err)
	}
	return ln, nil
}

// Server serves /metrics on a listener.
type Server struct {
	srv  *http.Server
	done chan struct{}
}

// Serve serves reg's metrics at /metrics on ln (which it owns) until Close.
func Serve(ln net.Listener, reg *prometheus.Registry, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slogPrinter{log},
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "korium-tun: metrics are at /metrics")
	})
	s := &Server{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      15 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    8 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	return s
}

// Close stops serving and waits for the server goroutine.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}

type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Warn("metrics: " + fmt.Sprint(v...)) }
