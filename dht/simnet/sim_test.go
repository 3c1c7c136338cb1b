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
		Net:     NetConfig{Seed: seed},
		PoWBits: 4,
		DHT:     dht.Config{PoWBits: 4},
	}
}

func runSim(t *testing.T, cfg ClusterConfig, lookups int, churn int) Summary {
	t.Helper()
	var sum Summary
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c, err := NewCluster(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		if err := c.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("bootstrap of %d nodes took %v virtual, %d messages", cfg.N, time.Since(start), c.Net.Messages.Load())
		for i := range c.Net.Requests {
			if v := c.Net.Requests[i].Load(); v > 0 {
				t.Logf("type %d: %d", i, v)
			}
		}
		// Let one adaptation window pass so tiers exist.
		time.Sleep(time.Minute)
		sum = Summarize(c.Resolve(ctx, lookups, 20))
	})
	return sum
}

func TestSim100(t *testing.T) {
	s := runSim(t, simConfig(100, 1), 200, 0)
	t.Log(s)
	if s.Success < 0.999 {
		t.Fatalf("success %.4f < 99.9%%", s.Success)
	}
}
