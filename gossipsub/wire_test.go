package gossipsub

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/korium/korium-tun/pki"
)

func testKey(tb testing.TB, i int) *pki.Keypair {
	tb.Helper()
	seed := make([]byte, 32)
	seed[0], seed[1], seed[2] = byte(i), byte(i>>8), byte(i>>16)
	seed[31] = 0x5a
	k, err := pki.NewKeypair(seed, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func sampleRPC(tb testing.TB) *RPC {
	k := testKey(tb, 1)
	m := WireMessage{Seqno: 7, Timestamp: 946684800123, Topic: "lobby", Data: []byte("hello")}
	SignMessage(k, &m)
	s := RelaySignal{Target: testKey(tb, 2).Identity(), Nonce: 9, Timestamp: 946684800456, Hops: 4, Payload: []byte("punch")}
	SignRelaySignal(k, &s)
	id := m.ID()
	return &RPC{
		Subs:      []SubOpt{{true, "lobby"}, {false, "old"}},
		Msgs:      []WireMessage{m},
		IHave:     []IHave{{Topic: "lobby", IDs: []MsgID{id, id}}},
		IWant:     []MsgID{id},
		Graft:     []string{"lobby"},
		Prune:     []Prune{{Topic: "x", Backoff: 60}},
		IDontWant: []MsgID{id},
		Relay:     []RelaySignal{s},
	}
}

func TestRPCRoundTrip(t *testing.T) {
	in := sampleRPC(t)
	b := AppendRPC(nil, in)
	out, err := DecodeRPC(b, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip differs:\n%+v\n%+v", in, out)
	}
	if !VerifyMessage(&out.Msgs[0]) || !VerifyRelaySignal(&out.Relay[0]) {
		t.Fatal("signatures do not verify after round trip")
	}
	out.Msgs[0].Data[0] ^= 1
	if VerifyMessage(&out.Msgs[0]) {
		t.Fatal("tampered message verifies")
	}
	out.Msgs[0].Data[0] ^= 1
	out.Msgs[0].Timestamp++
	if VerifyMessage(&out.Msgs[0]) {
		t.Fatal("message with a changed publish time verifies")
	}
	out.Relay[0].Timestamp++
	if VerifyRelaySignal(&out.Relay[0]) {
		t.Fatal("relay signal with a changed time verifies")
	}
	out.Relay[0].Timestamp--
	out.Relay[0].Hops = 1 // hops are not signed
	if !VerifyRelaySignal(&out.Relay[0]) {
		t.Fatal("hop change broke relay signature")
	}
}

func TestDecodeRejects(t *testing.T) {
	good := AppendRPC(nil, sampleRPC(t))
	big := AppendRPC(nil, &RPC{Msgs: []WireMessage{{Topic: "t", Data: make([]byte, 64<<10+1)}}})
	many := AppendRPC(nil, &RPC{IWant: make([]MsgID, 5001)})
	cases := []struct {
		name     string
		b        []byte
		tooLarge bool
	}{
		{"empty", nil, false},
		{"bad version", []byte{3}, false},
		{"version 1, before publish times", []byte{1, tagGraft, 0, 1, 1, 'a'}, false},
		{"truncated", good[:len(good)-1], false},
		{"trailing garbage tag", append(append([]byte{}, good...), 99), false},
		{"section out of order", []byte{wireVersion, tagIWant, 0, 1, tagSubs}, false},
		{"count beyond bytes", []byte{wireVersion, tagIWant, 0x00, 0x05, 1, 2}, false},
		{"empty topic", []byte{wireVersion, tagGraft, 0, 1, 0}, false},
		{"zero count", []byte{wireVersion, tagGraft, 0, 0}, false},
		{"bad flag", []byte{wireVersion, tagSubs, 0, 1, 7, 1, 'a'}, false},
		{"oversize message", big, true},
		{"too many iwant", many, true},
	}
	for _, c := range cases {
		_, err := DecodeRPC(c.b, Limits{})
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: error %v does not wrap ErrMalformed", c.name, err)
		}
		if errors.Is(err, ErrTooLarge) != c.tooLarge {
			t.Errorf("%s: ErrTooLarge=%v, want %v (%v)", c.name, !c.tooLarge, c.tooLarge, err)
		}
	}
	if _, err := DecodeRPC(good, Limits{MaxRPCSize: 10}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("rpc size limit: %v", err)
	}
}

func seedCorpus(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{wireVersion})
	f.Add(AppendRPC(nil, sampleRPC(f)))
	f.Add(AppendRPC(nil, &RPC{IHave: []IHave{{Topic: "a", IDs: make([]MsgID, 3)}}}))
	f.Add([]byte{wireVersion, tagIHave, 0, 1, 1, 'a', 0xff, 0xff})
	f.Add([]byte{wireVersion, tagMsgs, 0, 1})
}

// FuzzDecodeRPC: DecodeRPC never panics, and whatever it accepts re-encodes
// to the same bytes.
func FuzzDecodeRPC(f *testing.F) {
	seedCorpus(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRPC(b, Limits{})
		if err != nil {
			return
		}
		if again := AppendRPC(nil, r); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
		if n := encodedLen(r); n != len(b) {
			t.Fatalf("encodedLen %d, encoding %d bytes", n, len(b))
		}
	})
}

// encodedLen is the length AppendRPC writes, for every section alone, all
// of them at once, and the empty RPC: EncodeRPCs sizes its buffers by it
// and bounds RPCs by it before encoding.
func TestEncodedLen(t *testing.T) {
	full := sampleRPC(t)
	cases := []*RPC{{}, full,
		{Subs: full.Subs}, {Msgs: full.Msgs}, {IHave: full.IHave}, {IWant: full.IWant},
		{Graft: full.Graft}, {Prune: full.Prune}, {IDontWant: full.IDontWant}, {Relay: full.Relay},
		{IHave: []IHave{{Topic: "t", IDs: make([]MsgID, 250)}, {Topic: "u"}}}}
	for i, r := range cases {
		if n, b := encodedLen(r), AppendRPC(nil, r); n != len(b) {
			t.Errorf("case %d: encodedLen %d, AppendRPC wrote %d bytes", i, n, len(b))
		}
	}
	// One allocation per encoding: the buffer, at its size.
	ih := &RPC{IHave: []IHave{{Topic: "t", IDs: make([]MsgID, 250)}}}
	if a := testing.AllocsPerRun(50, func() { _ = EncodeRPCs(ih, Limits{}) }); a > 2 {
		t.Errorf("EncodeRPCs of one IHAVE of 250 ids allocates %.0f times, want 2 (buffer, result)", a)
	}
}

// FuzzDecodeMessage covers the message decoder on its own.
func FuzzDecodeMessage(f *testing.F) {
	r := sampleRPC(f)
	f.Add(AppendMessage(nil, &r.Msgs[0]))
	f.Add([]byte{})
	f.Add(make([]byte, minMsgSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMessage(b, Limits{MaxMessageSize: 1024})
		if err != nil {
			return
		}
		if len(m.Data) > 1024 {
			t.Fatalf("accepted %d bytes over limit", len(m.Data))
		}
		if again := AppendMessage(nil, &m); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

// FuzzDecodeRelaySignal covers the relay signal decoder on its own.
func FuzzDecodeRelaySignal(f *testing.F) {
	r := sampleRPC(f)
	f.Add(AppendRelaySignal(nil, &r.Relay[0]))
	f.Add([]byte{})
	f.Add(make([]byte, minRelaySize))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeRelaySignal(b, Limits{MaxRelayPayload: 100})
		if err != nil {
			return
		}
		if len(s.Payload) > 100 {
			t.Fatalf("accepted payload over limit")
		}
		if again := AppendRelaySignal(nil, &s); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func TestEncodeRPCsSplits(t *testing.T) {
	lim := Limits{MaxControl: 3, MaxIHaveIDs: 5, MaxIHaveTopics: 2, MaxMsgs: 2, MaxRPCSize: 4096}
	in := &RPC{
		Graft: []string{"a", "b", "c", "d", "e", "f", "g"},
		IHave: []IHave{{"a", make([]MsgID, 4)}, {"b", make([]MsgID, 2)}, {"c", make([]MsgID, 9)}},
		Msgs:  []WireMessage{{Topic: "t", Data: make([]byte, 1500)}, {Topic: "t", Data: make([]byte, 1500)}, {Topic: "t", Data: make([]byte, 1500)}, {Topic: "t", Data: make([]byte, 5000)}},
	}
	parts := EncodeRPCs(in, lim)
	var grafts, ihaveIDs, msgs int
	for _, b := range parts {
		r, err := DecodeRPC(b, lim)
		if err != nil {
			t.Fatalf("part rejected by the same limits: %v", err)
		}
		grafts += len(r.Graft)
		msgs += len(r.Msgs)
		for _, ih := range r.IHave {
			ihaveIDs += len(ih.IDs)
		}
	}
	// The 5000-byte message cannot fit 4096 bytes and is dropped; the
	// 9-ID IHAVE is cut to 5.
	if grafts != 7 || msgs != 3 || ihaveIDs != 4+2+5 {
		t.Fatalf("split lost items: grafts %d msgs %d ihave ids %d", grafts, msgs, ihaveIDs)
	}
	if one := EncodeRPCs(&RPC{Graft: []string{"a"}}, lim); len(one) != 1 {
		t.Fatalf("small rpc split into %d", len(one))
	}
}
