package simnet

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/korium/korium-tun/dht"
)

func simConfig(n int, seed uint64) ClusterConfig {
	return ClusterConfig{
		N:       n,
		Net:     NetConfig{Seed: seed, Loss: 0.001},
		PoWBits: 4,
		DHT:     dht.Config{PoWBits: 4},
	}
}

// settledCluster builds and bootstraps a cluster (closed when t ends), then
// lets one adaptation window pass so k, alpha and the tiers reflect the
// bootstrap traffic. The sleep is on synctest's virtual clock.
func settledCluster(t *testing.T, ctx context.Context, cfg ClusterConfig) *Cluster {
	t.Helper()
	c, err := NewCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute)
	return c
}

func TestSim1000NoChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c := settledCluster(t, ctx, simConfig(1000, 1))
		s := Summarize(c.Resolve(ctx, 2000, 20))
		t.Log(s)
		if s.Success < 0.999 {
			t.Fatalf("success %.4f, want >= 0.999", s.Success)
		}
		if s.HopsP99 > 6 {
			t.Fatalf("p99 hops %d for 1000 nodes", s.HopsP99)
		}
	})
}

func TestSim1000Churn20(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c := settledCluster(t, ctx, simConfig(1000, 2))
		done := make(chan struct{})
		var churnErr error
		go func() {
			defer close(done)
			// 20% of the nodes replaced over 10 virtual minutes.
			churnErr = c.Churn(ctx, 200, 3*time.Second)
		}()
		samples := c.ResolveUntil(ctx, done, 5, 3*time.Second)
		if churnErr != nil {
			t.Fatal(churnErr)
		}
		s := Summarize(samples)
		t.Log(s)
		if s.Lookups < 800 {
			t.Fatalf("only %d lookups", s.Lookups)
		}
		if s.Success < 0.99 {
			t.Fatalf("success under churn %.4f, want >= 0.99", s.Success)
		}
	})
}

// TestTieringCutsLatency checks the Coral-style tiers against the
// multi-region model: same network, same seed, tiers on and off.
func TestTieringCutsLatency(t *testing.T) {
	median := func(tiering bool) time.Duration {
		var s Summary
		synctest.Test(t, func(t *testing.T) {
			ctx := context.Background()
			cfg := simConfig(300, 5)
			cfg.DHT.DisableTiering = !tiering
			c := settledCluster(t, ctx, cfg)
			s = Summarize(c.Resolve(ctx, 600, 20))
		})
		t.Logf("tiering=%v: %v", tiering, s)
		return s.LatencyP50
	}
	on, off := median(true), median(false)
	if float64(on) > 0.7*float64(off) {
		t.Fatalf("median latency with tiers %v, without %v: cut below 30%%", on, off)
	}
}
