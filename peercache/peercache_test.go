package peercache

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/pki"
)

func record(t testing.TB, pow int, seq uint64) *dht.Record {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), pow)
	if err != nil {
		t.Fatal(err)
	}
	return signed(t, kp, seq)
}

func signed(t testing.TB, kp *pki.Keypair, seq uint64) *dht.Record {
	t.Helper()
	r := &dht.Record{Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:7400")}, Seq: seq, Expires: time.Now().Add(time.Hour)}
	if err := r.Sign(kp); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestBoundedMostRecentFirst(t *testing.T) {
	c := New(3, 0)
	t0 := time.Unix(1_700_000_000, 0)
	recs := make([]*dht.Record, 5)
	for i := range recs {
		recs[i] = record(t, 0, 1)
		if err := c.Add(recs[i], t0.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if c.Len() != 3 {
		t.Fatalf("len %d, want 3", c.Len())
	}
	ps := c.Peers()
	for i, want := range []*dht.Record{recs[4], recs[3], recs[2]} {
		if ps[i].Record.Identity != want.Identity {
			t.Fatalf("peer %d is %s, want %s", i, ps[i].Record.Identity.Short(), want.Identity.Short())
		}
	}
	// Reached longer ago than everything kept: not added.
	old := record(t, 0, 1)
	c.Add(old, t0.Add(-time.Hour))
	if c.Len() != 3 || c.Peers()[2].Record.Identity == old.Identity {
		t.Fatal("an older peer pushed out a newer one")
	}
}

func TestNewerRecordReplaces(t *testing.T) {
	kp, _ := pki.GenerateKeypair(context.Background(), 0)
	c := New(0, 0)
	now := time.Now()
	c.Add(signed(t, kp, 5), now)
	c.Add(signed(t, kp, 4), now.Add(time.Second)) // older record: time only
	p := c.Peers()
	if len(p) != 1 || p[0].Record.Seq != 5 || !p[0].Reached.Equal(now.Add(time.Second)) {
		t.Fatalf("got %+v", p)
	}
	c.Add(signed(t, kp, 9), now)
	if c.Peers()[0].Record.Seq != 9 {
		t.Fatal("newer record not kept")
	}
}

func TestRefusesUnverifiedRecords(t *testing.T) {
	c := New(0, 8)
	weak := record(t, 0, 1)
	for pki.PoWBits(weak.Identity, weak.Nonce) >= 8 {
		weak = record(t, 0, 1)
	}
	if err := c.Add(weak, time.Now()); !errors.Is(err, ErrRejected) {
		t.Fatalf("low proof of work: %v", err)
	}
	r := record(t, 8, 1)
	r.Addrs = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:7400")} // not what was signed
	if err := c.Add(r, time.Now()); !errors.Is(err, ErrRejected) {
		t.Fatalf("forged record: %v", err)
	}
	if c.Len() != 0 {
		t.Fatal("refused records were cached")
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "peers")
	c := New(0, 0)
	now := time.Unix(time.Now().Unix(), 0)
	for i := 0; i < 5; i++ {
		c.Add(record(t, 0, uint64(i+1)), now.Add(time.Duration(i)*time.Second))
	}
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	d := New(0, 0)
	st, err := d.Load(path)
	if err != nil || st.Loaded != 5 || st.Refused != 0 {
		t.Fatalf("load: %+v %v", st, err)
	}
	if !bytes.Equal(c.Marshal(), d.Marshal()) {
		t.Fatal("round trip differs")
	}
	// Missing file: a first start.
	if st, err := New(0, 0).Load(filepath.Join(dir, "none")); err != nil || st.Loaded != 0 {
		t.Fatalf("missing file: %+v %v", st, err)
	}
}

func TestLoadDistrustsTheFile(t *testing.T) {
	dir := t.TempDir()
	c := New(0, 0)
	now := time.Now()
	for i := 0; i < 3; i++ {
		c.Add(record(t, 0, 1), now)
	}
	data := c.Marshal()
	// Flip a signature byte of the first record: that one is refused.
	bad := append([]byte(nil), data...)
	first := len(fileHeader) + 10
	n := int(bad[first-2])<<8 | int(bad[first-1])
	bad[first+n-1] ^= 1
	st, err := New(0, 0).Unmarshal(bad)
	if err != nil || st.Loaded != 2 || st.Refused != 1 {
		t.Fatalf("tampered: %+v %v", st, err)
	}
	for name, b := range map[string][]byte{
		"truncated":  data[:len(data)-3],
		"header":     append([]byte("korium-tun-peers v2\n"), data[len(fileHeader):]...),
		"huge entry": append(append([]byte(fileHeader), make([]byte, 8)...), 0xff, 0xff),
		"too big":    append([]byte(fileHeader), make([]byte, New(2, 0).maxFileSize())...),
	} {
		cc := New(2, 0)
		if _, err := cc.Unmarshal(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if cc.Len() != 0 {
			t.Errorf("%s: kept %d peers of a malformed file", name, cc.Len())
		}
	}
	// A symlink is not followed.
	target := filepath.Join(dir, "real")
	os.WriteFile(target, data, 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(target, link)
	if _, err := New(0, 0).Load(link); err == nil {
		t.Fatal("loaded through a symlink")
	}
}

func FuzzUnmarshal(f *testing.F) {
	c := New(0, 0)
	c.Add(record(f, 0, 1), time.Now())
	f.Add(c.Marshal())
	f.Add([]byte(fileHeader))
	f.Fuzz(func(t *testing.T, b []byte) {
		cc := New(4, 0)
		st, err := cc.Unmarshal(b)
		if cc.Len() > 4 || (err == nil && st.Loaded > 4) {
			t.Fatalf("cache grew past its cap: %d", cc.Len())
		}
		if err != nil && cc.Len() != 0 {
			t.Fatal("kept peers of a malformed file")
		}
	})
}
