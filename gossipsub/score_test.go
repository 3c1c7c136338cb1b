package gossipsub

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/pki"
)

func TestComputeScore(t *testing.T) {
	def := DefaultScoreParams()
	p3 := def
	p3.Topic.MeshMessageDeliveriesWeight = -2
	p3.Topic.MeshFailurePenaltyWeight = -1
	cases := []struct {
		name string
		p    ScoreParams
		s    PeerStats
		want float64
	}{
		{"fresh peer", def, PeerStats{}, 0},
		{"P1 100s in mesh", def, PeerStats{Topics: map[string]*TopicStats{"a": {InMesh: true, MeshTime: 100 * time.Second}}}, 0.28},
		{"P1 capped", def, PeerStats{Topics: map[string]*TopicStats{"a": {InMesh: true, MeshTime: 10 * time.Hour}}}, 3600 * 0.0028},
		{"P1 only while in mesh", def, PeerStats{Topics: map[string]*TopicStats{"a": {MeshTime: time.Hour}}}, 0},
		{"P2 capped", def, PeerStats{Topics: map[string]*TopicStats{"a": {FirstMessageDeliveries: 100}}}, 10},
		{"P2 two topics", def, PeerStats{Topics: map[string]*TopicStats{"a": {FirstMessageDeliveries: 4}, "b": {FirstMessageDeliveries: 6}}}, 5},
		{"topic cap", func() ScoreParams { p := def; p.TopicScoreCap = 3; return p }(), PeerStats{Topics: map[string]*TopicStats{"a": {FirstMessageDeliveries: 20}}}, 3},
		{"P3 inactive", p3, PeerStats{Topics: map[string]*TopicStats{"a": {InMesh: true}}}, 0},
		{"P3 deficit squared", p3, PeerStats{Topics: map[string]*TopicStats{"a": {InMesh: true, MeshMessageDeliveriesActive: true, MeshMessageDeliveries: 0.5}}}, -2 * 0.25},
		{"P3 met", p3, PeerStats{Topics: map[string]*TopicStats{"a": {InMesh: true, MeshMessageDeliveriesActive: true, MeshMessageDeliveries: 3}}}, 0},
		{"P3b", p3, PeerStats{Topics: map[string]*TopicStats{"a": {MeshFailurePenalty: 4}}}, -4},
		{"P4 squared", def, PeerStats{Topics: map[string]*TopicStats{"a": {InvalidMessageDeliveries: 3}}}, -90},
		{"P4 not capped by topic cap", def, PeerStats{Topics: map[string]*TopicStats{"a": {FirstMessageDeliveries: 20, InvalidMessageDeliveries: 1}}}, 0},
		{"P5", def, PeerStats{AppScore: -7}, -7},
		{"P6 at threshold", def, PeerStats{IPColocated: 12}, 0},
		{"P6 one over", def, PeerStats{IPColocated: 13}, -5},
		{"P6 squared", def, PeerStats{IPColocated: 15}, -5 * 3 * 3},
		{"P6 capped", def, PeerStats{IPColocated: 20}, -75},
		{"P6 uncapped", func() ScoreParams { p := def; p.IPColocationFactorCap = 0; return p }(), PeerStats{IPColocated: 20}, -5 * 8 * 8},
		{"P6 cap plus one invalid message", def, PeerStats{IPColocated: 1000, Topics: map[string]*TopicStats{"a": {InvalidMessageDeliveries: 1}}}, -85},
		{"P7 below threshold", def, PeerStats{BehaviourPenalty: 6}, 0},
		{"P7 squared", def, PeerStats{BehaviourPenalty: 9}, -90},
	}
	for _, c := range cases {
		if got := ComputeScore(&c.p, &c.s); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s: score %v, want %v", c.name, got, c.want)
		}
	}
	// The thresholds documented on DefaultScoreParams.
	if s := ComputeScore(&def, &PeerStats{Topics: map[string]*TopicStats{"a": {InvalidMessageDeliveries: 3}}}); s >= def.GraylistThreshold {
		t.Errorf("3 invalid messages: %v not below graylist", s)
	}
	if s := ComputeScore(&def, &PeerStats{BehaviourPenalty: 9}); s >= def.GraylistThreshold {
		t.Errorf("behaviour penalty 9: %v not below graylist", s)
	}
	// P6 alone never graylists (the reference's cap), but a crowd is kept
	// out of our mesh (score < 0) from 13 peers in one prefix on, and out of
	// flood publishing from 16 on.
	for n := 0; n <= 100000; n = max(n+1, n*2) {
		s := ComputeScore(&def, &PeerStats{IPColocated: n})
		switch {
		case s < def.GraylistThreshold:
			t.Errorf("%d colocated: %v below the graylist", n, s)
		case n <= def.IPColocationFactorThreshold && s != 0:
			t.Errorf("%d colocated: %v, want 0 up to the threshold", n, s)
		case n > def.IPColocationFactorThreshold && s >= 0:
			t.Errorf("%d colocated: %v, want negative (no mesh) beyond the threshold", n, s)
		case n >= 16 && s >= def.PublishThreshold:
			t.Errorf("%d colocated: %v, want below the publish threshold", n, s)
		}
	}
}

func TestDecayStats(t *testing.T) {
	p := DefaultScoreParams()
	p.Topic.MeshMessageDeliveriesActivation = 5 * time.Second
	s := PeerStats{BehaviourPenalty: 10, Topics: map[string]*TopicStats{
		"a": {InMesh: true, MeshTime: 6 * time.Second, FirstMessageDeliveries: 10, InvalidMessageDeliveries: 0.0101},
	}}
	decayStats(&p, &s)
	ts := s.Topics["a"]
	if math.Abs(ts.FirstMessageDeliveries-9.9) > 1e-9 || math.Abs(s.BehaviourPenalty-9) > 1e-9 {
		t.Errorf("decay: %+v %v", ts, s.BehaviourPenalty)
	}
	if ts.InvalidMessageDeliveries != 0 {
		t.Errorf("value under DecayToZero kept: %v", ts.InvalidMessageDeliveries)
	}
	if !ts.MeshMessageDeliveriesActive {
		t.Error("P3 not activated after activation time")
	}
}

func TestColocationPrefix(t *testing.T) {
	p := DefaultScoreParams()
	for _, c := range []struct {
		addr, want string // want "" = not counted
	}{
		{"198.51.100.7", "198.51.0.0/16"},
		{"::ffff:198.51.3.9", "198.51.0.0/16"},
		{"2001:db8:1:2::5", "2001:db8::/32"},
		{"127.0.0.1", ""},
		{"127.3.4.5", ""},
		{"::1", ""},
		{"::ffff:127.0.0.1", ""},
		{"0.0.0.0", ""},
		{"10.1.2.3", "10.1.2.3/32"},
		{"172.16.9.9", "172.16.9.9/32"},
		{"192.168.1.20", "192.168.1.20/32"},
		{"169.254.7.7", "169.254.7.7/32"},
		{"fd00:1::9", "fd00:1::9/128"},
		{"fe80::1%eth0", "fe80::1/128"},
		{"100.64.1.2", "100.64.0.0/16"}, // carrier-grade NAT: shared by strangers
	} {
		got := colocationPrefix(&p, netip.MustParseAddr(c.addr))
		if (c.want == "" && got.IsValid()) || (c.want != "" && got.String() != c.want) {
			t.Errorf("%s: grouped as %v, want %q", c.addr, got, c.want)
		}
	}
	if colocationPrefix(&p, netip.Addr{}).IsValid() {
		t.Error("invalid address grouped")
	}
	p.IPColocationWhitelist = []netip.Prefix{netip.MustParsePrefix("198.51.0.0/16")}
	if got := colocationPrefix(&p, netip.MustParseAddr("198.51.7.7")); got.IsValid() {
		t.Errorf("whitelisted address grouped as %v", got)
	}
	if got := colocationPrefix(&p, netip.MustParseAddr("198.52.7.7")); got.String() != "198.52.0.0/16" {
		t.Errorf("address outside the whitelist grouped as %v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	d := DefaultConfig()
	if d.D != 6 || d.Dlo != 5 || d.Dhi != 12 || d.Dout != 2 || d.Dscore != 4 || d.HeartbeatInterval != time.Second ||
		d.MaxMessageSize != 64<<10 || d.PublishRate != 100 || d.ReceiveRate != 50 || d.MaxTopics != 10000 || d.MaxPeersPerTopic != 1000 {
		t.Fatalf("defaults differ from the reference: %+v", d)
	}
	cases := []struct {
		field string
		c     Config
	}{
		{"Dlo", Config{Dlo: 7}},
		{"Dhi", Config{D: 8, Dhi: 7}},
		{"Dout", Config{Dout: 4}},
		{"HistoryGossip", Config{HistoryGossip: 9}},
		{"MaxPruneBackoff", Config{PruneBackoff: time.Hour, MaxPruneBackoff: time.Minute}},
		{"GossipFactor", Config{GossipFactor: 2}},
		{"D", Config{D: -1}},
		{"MaxIHaveMessages", Config{MaxIHaveMessages: -1}},
		{"SignalQueue", Config{SignalQueue: -1}},
		{"Score.GraylistThreshold", Config{Score: func() ScoreParams { p := DefaultScoreParams(); p.GraylistThreshold = 0; return p }()}},
		{"Score.BehaviourPenaltyDecay", Config{Score: func() ScoreParams { p := DefaultScoreParams(); p.BehaviourPenaltyDecay = 1; return p }()}},
		{"Score.IPColocationFactorCap", Config{Score: func() ScoreParams { p := DefaultScoreParams(); p.IPColocationFactorCap = -1; return p }()}},
		{"Score.IPColocationFactorThreshold", Config{Score: func() ScoreParams { p := DefaultScoreParams(); p.IPColocationFactorThreshold = 0; return p }()}},
		{"MaxMessageAge", Config{MaxMessageAge: 4 * time.Second}}, // below the 5 s message cache window
		{"MaxClockSkew", Config{MaxClockSkew: -time.Second}},
		{"RelayMaxAge", Config{RelayMaxAge: time.Millisecond}},
	}
	for _, c := range cases {
		err := c.c.Validate()
		if err == nil || !strings.Contains(err.Error(), "Config."+c.field) {
			t.Errorf("%s: error %v does not name the field", c.field, err)
		}
	}
}

// TestColocationInRouter adds crowds of peers to a router and reads their
// scores: 12 in one public /16 cost nothing, a 13th puts the whole crowd
// out of the mesh (negative), 20 reach the cap (below the publish
// threshold, above the graylist); 30 on distinct private addresses of one
// /16 (a LAN) and 30 on loopback (one host) cost nothing; 20 sybils on one
// private address do. A peer that leaves takes its count with it.
func TestColocationInRouter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		def := DefaultScoreParams()
		next := byte(0)
		crowd := func(n int, addr func(i int) netip.Addr) []pki.Identity {
			ids := make([]pki.Identity, n)
			for i := range ids {
				next++
				ids[i] = pki.Identity{0xc0, next}
				r.AddPeer(ids[i], addr(i), false)
			}
			return ids
		}
		score := func(id pki.Identity) float64 {
			s, ok := r.Score(id)
			if !ok {
				t.Fatalf("no score for %s", id.Short())
			}
			return s
		}
		public := crowd(12, func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, byte(i), 1}) })
		if s := score(public[0]); s != 0 {
			t.Errorf("12 peers in one /16: score %v, want 0", s)
		}
		public = append(public, crowd(1, func(int) netip.Addr { return netip.MustParseAddr("198.51.200.1") })...)
		if s := score(public[0]); s != -5 {
			t.Errorf("13 peers in one /16: score %v, want -5", s)
		}
		public = append(public, crowd(7, func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) })...)
		if s := score(public[5]); s != -def.IPColocationFactorCap || s >= def.PublishThreshold || s < def.GraylistThreshold {
			t.Errorf("20 peers in one /16: score %v, want the cap %v", s, -def.IPColocationFactorCap)
		}
		lan := crowd(30, func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i / 5), byte(1 + i)}) })
		host := crowd(30, func(int) netip.Addr { return netip.MustParseAddr("127.0.0.1") })
		if s, h := score(lan[0]), score(host[0]); s != 0 || h != 0 {
			t.Errorf("30 on a LAN: %v, 30 on loopback: %v; want 0 and 0", s, h)
		}
		sybils := crowd(20, func(int) netip.Addr { return netip.MustParseAddr("10.9.9.9") })
		if s := score(sybils[0]); s != -def.IPColocationFactorCap {
			t.Errorf("20 on one private address: %v, want the cap", s)
		}
		for _, id := range public[5:] {
			r.RemovePeer(id)
		}
		if s := score(public[0]); s != 0 {
			t.Errorf("5 peers left in the /16: score %v, want 0", s)
		}
		if err := checkRouter(r); err != nil {
			t.Fatal(err)
		}
	})
}

// TestScoreSurvivesReconnect: a peer that leaves and comes back within
// RetainScore is scored from the state it left, not afresh: a
// misbehaving peer cannot wash its score by reconnecting. Router.Score
// reads the connected peer's own pointer (peer.score), so a fresh entry
// made on reconnect would read 0 here.
func TestScoreSurvivesReconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, nodes := line(t, 1, Config{})
		defer closeAll(nodes)
		r := nodes[0].r
		id := pki.Identity{0xba, 0xd}
		addr := netip.MustParseAddr("198.51.100.7")
		r.AddPeer(id, addr, false)
		r.do(func() { r.penalize(id, 10) }) // 4 over the threshold of 6: -160
		want := -160.0
		if s, _ := r.Score(id); s != want {
			t.Fatalf("penalized: score %v, want %v", s, want)
		}
		r.RemovePeer(id)
		if s, ok := r.Score(id); !ok || s != want {
			t.Fatalf("gone: score %v (kept %v), want %v kept", s, ok, want)
		}
		r.AddPeer(id, addr, false)
		r.do(r.heartbeat)
		if s, _ := r.Score(id); s > want/2 {
			t.Fatalf("back: score %v, want about %v (what it left with, decayed by a heartbeat at most)", s, want)
		}
		if err := checkRouter(r); err != nil {
			t.Fatal(err)
		}
	})
}
