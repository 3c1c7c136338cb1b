package dht_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/dht/simnet"
	"github.com/korium/korium-tun/smartaddr"
)

func smallCluster(t *testing.T, n int) *simnet.Cluster {
	t.Helper()
	c, err := simnet.NewCluster(simnet.ClusterConfig{
		N: n, Net: simnet.NetConfig{Seed: 3}, PoWBits: 2, DHT: dht.Config{PoWBits: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Bootstrap(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestResolveByIdentityAndSmartAddr(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c := smallCluster(t, 40)
		nodes := c.Nodes()
		src, dst := nodes[3], nodes[29]
		rec, err := src.DHT.Resolve(ctx, dst.KP.Identity())
		if err != nil {
			t.Fatal(err)
		}
		if rec.Identity != dst.KP.Identity() || len(rec.Addrs) != 1 || rec.Addrs[0] != dst.EP.Addr() {
			t.Fatalf("resolved %+v", rec)
		}
		rec, err = src.DHT.ResolveAddr(ctx, smartaddr.FromIdentity(dst.KP.Identity()))
		if err != nil || rec.Identity != dst.KP.Identity() {
			t.Fatalf("ResolveAddr = %+v, %v", rec, err)
		}
		// An address nobody owns is not found; a non-overlay address is an
		// error.
		var ghost [32]byte
		ghost[0] = 0x55
		if _, err := src.DHT.ResolveAddr(ctx, smartaddr.FromHash(ghost)); !errors.Is(err, dht.ErrNotFound) {
			t.Fatalf("ghost address: %v", err)
		}
		if _, err := src.DHT.ResolveAddr(ctx, netip.MustParseAddr("192.0.2.1")); err == nil {
			t.Fatal("non-overlay address accepted")
		}
		peers, err := src.DHT.FindPeers(ctx, dst.DHT.ID())
		if err != nil || len(peers) == 0 || peers[0].Identity != dst.KP.Identity() {
			t.Fatalf("FindPeers nearest = %v, %v; want the target itself", peers, err)
		}
	})
}

func TestAddressChangeRepublishes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c := smallCluster(t, 30)
		nodes := c.Nodes()
		mover, asker := nodes[5], nodes[20]
		old, err := asker.DHT.Resolve(ctx, mover.KP.Identity())
		if err != nil {
			t.Fatal(err)
		}
		newAddr := netip.MustParseAddrPort("198.18.77.7:9999")
		mover.DHT.SetAddrs([]netip.AddrPort{newAddr})
		time.Sleep(10 * time.Second) // virtual: the republish runs
		synctest.Wait()
		// Ask a node that does not hold the record itself... any node:
		// holders replaced it with the higher sequence number.
		rec, err := nodes[11].DHT.Resolve(ctx, mover.KP.Identity())
		if err != nil {
			t.Fatal(err)
		}
		if rec.Seq <= old.Seq || rec.Addrs[0] != newAddr {
			t.Fatalf("after SetAddrs got seq %d addrs %v (old seq %d)", rec.Seq, rec.Addrs, old.Seq)
		}
		// Republish before expiry keeps the record alive past its TTL.
		time.Sleep(2 * time.Hour)
		if _, err := nodes[12].DHT.Resolve(ctx, mover.KP.Identity()); err != nil {
			t.Fatalf("record gone after two TTLs despite republishing: %v", err)
		}
	})
}

func TestStatsSnapshotClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := smallCluster(t, 25)
		time.Sleep(time.Minute) // one adaptation window
		d := c.Nodes()[0].DHT
		st := d.Stats()
		if st.TableSize == 0 || st.Buckets == 0 || st.K < dht.MinK || st.Alpha < dht.MinAlpha || st.Records == 0 || len(st.Tiers) == 0 {
			t.Fatalf("stats %+v", st)
		}
		snap := d.Snapshot()
		n := 0
		for _, b := range snap.Buckets {
			n += len(b.Contacts)
			for _, ci := range b.Contacts {
				if ci.Tier < 0 || ci.Tier >= len(snap.Tiers) || ci.RTT <= 0 {
					t.Fatalf("contact info %+v with %d tiers", ci, len(snap.Tiers))
				}
			}
		}
		if n != st.TableSize {
			t.Fatalf("snapshot has %d contacts, stats %d", n, st.TableSize)
		}
		// Close is idempotent; lookups after it fail fast.
		d.Close()
		d.Close()
		if _, err := d.FindPeers(context.Background(), d.ID()); !errors.Is(err, dht.ErrClosed) {
			t.Fatalf("lookup after Close: %v", err)
		}
		// synctest.Test itself fails if any goroutine outlives the bubble,
		// so Cleanup's Close of every node must stop them all.
	})
}
