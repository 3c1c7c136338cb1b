package metrics

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/dnsserver"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/smartsock"
)

type fakeNode struct{ st overlay.Status }

func (f *fakeNode) Status() overlay.Status { return f.st }
func (f *fakeNode) GossipStats() (gossipsub.Stats, bool) {
	return gossipsub.Stats{Published: 3, Delivered: 7, DropGraylisted: 2, DropMalformed: 1}, true
}

func peerStatus(id string, since time.Time, kind string, tx, rx uint64) overlay.PeerStatus {
	p := overlay.PeerStatus{Identity: id, Since: since, TxBytes: tx, TxPackets: tx / 100, RxBytes: rx, RxPackets: rx / 100}
	if kind != "" {
		p.Path = &smartsock.PathStatus{Kind: kind}
	}
	return p
}

func testSources() (*fakeNode, Sources) {
	t0 := time.Unix(1000, 0)
	n := &fakeNode{st: overlay.Status{
		Uptime: 90 * time.Second,
		Peers: []overlay.PeerStatus{
			peerStatus("aa", t0, "direct", 1000, 2000),
			peerStatus("bb", t0, "relay", 500, 100),
			peerStatus("cc", t0, "", 0, 0),
		},
		Drops:    map[string]uint64{"tx_no_peer": 4, "handshake_refused": 5, "rpc_refused": 1},
		Counters: map[string]uint64{"handshakes": 9, "resolve_ok": 2, "resolve_failed": 1},
		DHT: &dht.Stats{TableSize: 12, Lookups: 3, LookupFailures: 1, Drops: map[string]uint64{"malformed": 6},
			LookupSeconds: dht.Histogram{Bounds: []float64{0.01, 0.1}, Counts: []uint64{1, 1, 1}, Sum: 1.5, Count: 3}},
		NAT:   overlay.NATStatus{Checked: true, Public: true},
		Relay: &server.Stats{Sessions: 2, Opened: 4, ForwardedBytes: 999, RefusedPerIP: 1, DropRate: 3},
	}}
	return n, Sources{
		Node:    n,
		DNS:     func() (dnsserver.Stats, bool) { return dnsserver.Stats{Answered: 5, Refused: 2}, true },
		Names:   func() int { return 2 },
		Version: "v0.1.0", Commit: "abc",
	}
}

func TestCollect(t *testing.T) {
	_, src := testSources()
	c := NewCollector(src)
	want := `
# HELP korium_peers Connected peers by the kind of path their traffic takes now (direct, relay, or none before a path is confirmed).
# TYPE korium_peers gauge
korium_peers{path="direct"} 1
korium_peers{path="none"} 1
korium_peers{path="relay"} 1
# HELP korium_tunnel_bytes_total IP bytes carried through the tunnel, by direction (tx: to peers, rx: from peers).
# TYPE korium_tunnel_bytes_total counter
korium_tunnel_bytes_total{direction="rx"} 2100
korium_tunnel_bytes_total{direction="tx"} 1500
# HELP korium_refusals_total Peers' attempts refused, by reason.
# TYPE korium_refusals_total counter
korium_refusals_total{reason="handshake_identity"} 5
korium_refusals_total{reason="relay_bad_address"} 0
korium_refusals_total{reason="relay_per_ip_limit"} 1
korium_refusals_total{reason="relay_self"} 0
korium_refusals_total{reason="relay_session_limit"} 0
korium_refusals_total{reason="rpc_stream_limit"} 1
# HELP korium_dht_lookup_duration_seconds Latency of DHT lookups, finished or failed.
# TYPE korium_dht_lookup_duration_seconds histogram
korium_dht_lookup_duration_seconds_bucket{le="0.01"} 1
korium_dht_lookup_duration_seconds_bucket{le="0.1"} 2
korium_dht_lookup_duration_seconds_bucket{le="+Inf"} 3
korium_dht_lookup_duration_seconds_sum 1.5
korium_dht_lookup_duration_seconds_count 3
# HELP korium_gossip_score_drops_total Pubsub RPCs dropped because their sender's score is below the graylist threshold.
# TYPE korium_gossip_score_drops_total counter
korium_gossip_score_drops_total 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "korium_peers", "korium_tunnel_bytes_total",
		"korium_refusals_total", "korium_dht_lookup_duration_seconds", "korium_gossip_score_drops_total"); err != nil {
		t.Fatal(err)
	}
	text := gather(t, c)
	for _, line := range []string{
		`korium_drops_total{layer="tunnel",reason="tx_no_peer"} 4`,
		`korium_drops_total{layer="dht",reason="malformed"} 6`,
		`korium_drops_total{layer="gossip",reason="graylisted"} 2`,
		`korium_drops_total{layer="relay",reason="rate"} 3`,
		`korium_drops_total{layer="smartsock",reason="unknown_source"} 0`,
		`korium_handshakes_total 9`,
		`korium_nat_public 1`,
		`korium_relay_sessions 2`,
		`korium_dns_queries_total{result="refused_not_local"} 2`,
		`korium_names 2`,
		`korium_build_info{commit="abc",version="v0.1.0"} 1`,
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("missing %q", line)
		}
	}
	if strings.Contains(text, `reason="handshake_refused"`) {
		t.Error("a refusal is also reported as a drop")
	}
	// The names a scrape shows pass Prometheus' lint (what promtool check
	// metrics runs), runtime collectors included.
	problems, err := testutil.GatherAndLint(NewRegistry(src))
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
}

func registry(c *Collector) *prometheus.Registry {
	r := prometheus.NewPedanticRegistry()
	r.MustRegister(c)
	return r
}

// gather scrapes c over HTTP, as Prometheus would.
func gather(t *testing.T, c *Collector) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(ln, registry(c), nil)
	defer s.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	return string(b)
}

// value is the value of the series name{label=...} in a scrape of reg.
func value(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return 0
}

// Counters never go down when a peer disconnects or reconnects.
func TestTrafficIsMonotonic(t *testing.T) {
	n, src := testSources()
	reg := registry(NewCollector(src))
	sum := func() (tx, rx float64) {
		return value(t, reg, "korium_tunnel_bytes_total", "tx"), value(t, reg, "korium_tunnel_bytes_total", "rx")
	}
	tx0, rx0 := sum()
	n.st.Peers = n.st.Peers[1:] // aa disconnects
	tx1, rx1 := sum()
	if tx1 != tx0 || rx1 != rx0 {
		t.Fatalf("after a disconnect: tx %v -> %v, rx %v -> %v", tx0, tx1, rx0, rx1)
	}
	n.st.Peers = append(n.st.Peers, peerStatus("aa", time.Unix(2000, 0), "direct", 10, 20)) // aa reconnects
	tx2, rx2 := sum()
	if tx2 != tx1+10 || rx2 != rx1+20 {
		t.Fatalf("after a reconnect: tx %v -> %v, rx %v -> %v", tx1, tx2, rx1, rx2)
	}
}

func TestListen(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "198.51.100.1:0"} {
		if _, err := Listen(addr, false); !errors.Is(err, ErrNotLoopback) || !strings.Contains(err.Error(), "--metrics-public") {
			t.Errorf("Listen(%s): %v", addr, err)
		}
	}
	for _, addr := range []string{"nohost", "example.com:9000"} {
		if _, err := Listen(addr, true); err == nil {
			t.Errorf("Listen(%s) accepted", addr)
		}
	}
	ln, err := Listen("localhost:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(ln.Addr().String(), false); err == nil || !strings.Contains(err.Error(), "in use") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("port in use: %v", err)
	}
	pub, err := Listen("0.0.0.0:0", true)
	if err != nil {
		t.Fatal(err)
	}
	pub.Close()
}
