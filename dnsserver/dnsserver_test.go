package dnsserver

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

var (
	bobAddr = netip.MustParseAddr("fd00:c0f1:1234:5678:9abc:def0:1122:3344")
	host    = netip.MustParseAddr("198.18.0.1")
	peer    = netip.MustParseAddr("fd00:c0f1:aaaa::1") // another peer's SmartAddr
)

func testServer() *Server {
	return &Server{
		cfg: Config{
			Lookup:  func(n string) (netip.Addr, bool) { return bobAddr, n == "bob" },
			Reverse: func(a netip.Addr) (string, bool) { return "bob", a == bobAddr },
			Local:   func(a netip.Addr) bool { return a == host || a.IsLoopback() },
			TTL:     60 * time.Second,
		},
		tokens: refuseBurst, lastRefill: time.Now(),
	}
}

func query(t testing.TB, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4242, RecursionDesired: true})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func parse(t testing.TB, resp []byte) dnsmessage.Message {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpack response: %v", err)
	}
	if m.ID != 0x4242 || !m.Response {
		t.Fatalf("header %+v", m.Header)
	}
	return m
}

func TestAnswers(t *testing.T) {
	s := testServer()
	rev := "4.4.3.3.2.2.1.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.1.f.0.c.0.0.d.f.ip6.arpa."
	cases := []struct {
		name  string
		typ   dnsmessage.Type
		src   netip.Addr
		rcode dnsmessage.RCode
		n     int // answers
	}{
		{"bob.korium.", dnsmessage.TypeAAAA, host, dnsmessage.RCodeSuccess, 1},
		{"BoB.Korium.", dnsmessage.TypeAAAA, netip.MustParseAddr("::1"), dnsmessage.RCodeSuccess, 1},
		{"bob.korium.", dnsmessage.TypeA, host, dnsmessage.RCodeSuccess, 0},
		{"alice.korium.", dnsmessage.TypeAAAA, host, dnsmessage.RCodeNameError, 0},
		{"x.bob.korium.", dnsmessage.TypeAAAA, host, dnsmessage.RCodeNameError, 0},
		{"korium.", dnsmessage.TypeAAAA, host, dnsmessage.RCodeSuccess, 0},
		{rev, dnsmessage.TypePTR, host, dnsmessage.RCodeSuccess, 1},
		{"5" + rev[1:], dnsmessage.TypePTR, host, dnsmessage.RCodeNameError, 0},
		{"example.com.", dnsmessage.TypeA, host, dnsmessage.RCodeRefused, 0},
		// Another overlay peer, through the TUN: refused, whatever it asks.
		{"bob.korium.", dnsmessage.TypeAAAA, peer, dnsmessage.RCodeRefused, 0},
		{rev, dnsmessage.TypePTR, peer, dnsmessage.RCodeRefused, 0},
		{"bob.korium.", dnsmessage.TypeAAAA, netip.MustParseAddr("198.18.0.2"), dnsmessage.RCodeRefused, 0},
	}
	for _, c := range cases {
		resp := s.answer(c.src, query(t, c.name, c.typ), nil, time.Now())
		m := parse(t, resp)
		if m.RCode != c.rcode || len(m.Answers) != c.n || len(m.Questions) != 1 {
			t.Errorf("%s %v from %s: rcode %v, %d answers; want %v, %d", c.name, c.typ, c.src, m.RCode, len(m.Answers), c.rcode, c.n)
			continue
		}
		if c.n == 0 {
			continue
		}
		switch r := m.Answers[0].Body.(type) {
		case *dnsmessage.AAAAResource:
			if netip.AddrFrom16(r.AAAA) != bobAddr || m.Answers[0].Header.TTL != 60 || !m.Authoritative {
				t.Errorf("AAAA answer %+v", m.Answers[0])
			}
		case *dnsmessage.PTRResource:
			if r.PTR.String() != "bob.korium." {
				t.Errorf("PTR answer %v", r.PTR)
			}
		}
	}
	st := s.Stats()
	if st.Refused != 3 || st.Answered != 3 || st.NXDomain != 3 || st.RefusedZone != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMalformedAndResponsesGetNothing(t *testing.T) {
	s := testServer()
	q := query(t, "bob.korium.", dnsmessage.TypeAAAA)
	resp := s.answer(host, q, nil, time.Now())
	for name, in := range map[string][]byte{
		"empty":     nil,
		"truncated": q[:len(q)-3],
		"response":  resp, // never answer a response (no loops)
		"garbage":   []byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
	} {
		if out := s.answer(host, in, nil, time.Now()); out != nil {
			t.Errorf("%s: answered %x", name, out)
		}
	}
	// Two questions: FORMERR for us, REFUSED for a stranger.
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4242})
	b.StartQuestions()
	for range 2 {
		b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("bob.korium."), Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET})
	}
	two, _ := b.Finish()
	if m := parse(t, s.answer(host, two, nil, time.Now())); m.RCode != dnsmessage.RCodeFormatError {
		t.Errorf("two questions: %v", m.RCode)
	}
	if m := parse(t, s.answer(peer, two, nil, time.Now())); m.RCode != dnsmessage.RCodeRefused || len(m.Answers) != 0 {
		t.Errorf("two questions from a peer: %v", m.RCode)
	}
}

// A flood of queries from a stranger gets at most refuseBurst REFUSED at
// once and refuseRate a second after that; the rest get nothing, and no
// answer is larger than its query (no amplification).
func TestRefusalsAreRateLimited(t *testing.T) {
	s := testServer()
	q := query(t, "bob.korium.", dnsmessage.TypeAAAA)
	now := time.Now()
	sent := 0
	for range 1000 {
		if out := s.answer(peer, q, nil, now); out != nil {
			sent++
			if len(out) > len(q) {
				t.Fatalf("REFUSED of %d bytes to a %d-byte query", len(out), len(q))
			}
		}
	}
	if sent != refuseBurst {
		t.Fatalf("%d REFUSED sent in one instant, want %d", sent, refuseBurst)
	}
	sent = 0
	for i := range 1000 {
		if s.answer(peer, q, nil, now.Add(time.Duration(i)*time.Millisecond)) != nil {
			sent++
		}
	}
	if sent < refuseRate-1 || sent > refuseRate+1 {
		t.Fatalf("%d REFUSED in one second, want about %d", sent, refuseRate)
	}
	if st := s.Stats(); st.RefuseLimited < 1900 {
		t.Fatalf("stats %+v", st)
	}
	// This host is never limited.
	for range 100 {
		if m := parse(t, s.answer(host, q, nil, now)); m.RCode != dnsmessage.RCodeSuccess {
			t.Fatal("local query limited")
		}
	}
}

// Over a real socket: a query from loopback is answered, and the answer
// path allocates a bounded, small amount.
func TestServeUDP(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(pc, Config{Lookup: func(n string) (netip.Addr, bool) { return bobAddr, n == "bob" }})
	defer s.Close()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(query(t, "bob.korium.", dnsmessage.TypeAAAA)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	m := parse(t, buf[:n])
	if len(m.Answers) != 1 || netip.AddrFrom16(m.Answers[0].Body.(*dnsmessage.AAAAResource).AAAA) != bobAddr {
		t.Fatalf("answer %+v", m)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close() // idempotent

	ts := testServer()
	q := query(t, "bob.korium.", dnsmessage.TypeAAAA)
	out := make([]byte, 0, maxResponse)
	allocs := testing.AllocsPerRun(200, func() { ts.answer(host, q, out[:0], time.Now()) })
	if allocs > 8 {
		t.Fatalf("%.1f allocations per answer, want at most 8", allocs)
	}
}

func TestLocalAddrs(t *testing.T) {
	l := NewLocalAddrs()
	for _, a := range []string{"127.0.0.1", "::1", "127.9.9.9"} {
		if !l.Contains(netip.MustParseAddr(a)) {
			t.Errorf("%s not local", a)
		}
	}
	for _, a := range []string{"198.51.100.7", "fd00:c0f1:aaaa::1", "::", "ff02::1"} {
		if l.Contains(netip.MustParseAddr(a)) {
			t.Errorf("%s local", a)
		}
	}
	ifaddrs, _ := net.InterfaceAddrs()
	for _, ia := range ifaddrs {
		p, _ := netip.ParsePrefix(ia.String())
		if !l.Contains(p.Addr()) {
			t.Errorf("interface address %s not local", p.Addr())
		}
	}
}

func TestParseReverse(t *testing.T) {
	a, ok := parseReverse("4.4.3.3.2.2.1.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.1.f.0.c.0.0.d.f.ip6.arpa.")
	if !ok || a != bobAddr {
		t.Fatalf("%v %v", a, ok)
	}
	for _, bad := range []string{
		"4.4.3.3.2.2.1.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.1.f.0.c.0.0.d.e.ip6.arpa.", // not fd00:c0f1
		"4.4.3.3.2.2.1.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.1.f.0.c.0.0.d.ip6.arpa.",
		"44.3.3.2.2.1.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.1.f.0.c.0.0.d.f.ip6.arpa..",
		"g.4.3.3.2.2.1.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.1.f.0.c.0.0.d.f.ip6.arpa.",
	} {
		if _, ok := parseReverse(bad); ok {
			t.Errorf("parseReverse(%q) accepted", bad)
		}
	}
}

func FuzzAnswer(f *testing.F) {
	f.Add(query(f, "bob.korium.", dnsmessage.TypeAAAA), true)
	f.Add(query(f, "4.4.3.3.2.2.1.1.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.1.f.0.c.0.0.d.f.ip6.arpa.", dnsmessage.TypePTR), true)
	f.Add(query(f, "example.com.", dnsmessage.TypeA), false)
	f.Add([]byte{0, 1, 2}, true)
	f.Fuzz(func(t *testing.T, req []byte, local bool) {
		s := testServer()
		src := peer
		if local {
			src = host
		}
		out := s.answer(src, req, make([]byte, 0, maxResponse), time.Now())
		if out == nil {
			return
		}
		if len(out) > maxResponse {
			t.Fatalf("response of %d bytes", len(out))
		}
		var m dnsmessage.Message
		if err := m.Unpack(out); err != nil {
			t.Fatalf("unparseable response: %v", err)
		}
		if !m.Response || len(m.Questions) != 1 {
			t.Fatalf("response %+v", m.Header)
		}
		if !local && (m.RCode != dnsmessage.RCodeRefused || len(m.Answers) != 0) {
			t.Fatalf("stranger got %v with %d answers", m.RCode, len(m.Answers))
		}
	})
}
