package simnet

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

var (
	figures      = flag.String("dht.figures", "", "comma-separated network sizes to print SIMULATION.md figures for (e.g. 1000,10000)")
	figuresModes = flag.String("dht.adaptive", "on,off", "which adaptive k/α settings -dht.figures runs (on, off or on,off)")
)

// TestFigures prints the table of dht/SIMULATION.md. It runs only when
// -dht.figures is given, because N=10,000 takes minutes:
//
//	go test ./dht/simnet -run TestFigures -v -timeout 3h -args -dht.figures=1000,10000
func TestFigures(t *testing.T) {
	if *figures == "" {
		t.Log("figures not requested (-dht.figures=1000,10000)")
		return
	}
	var rows []string
	for _, f := range strings.Split(*figures, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 10 {
			t.Fatalf("bad size %q", f)
		}
		for _, adaptive := range []bool{true, false} {
			if !strings.Contains(*figuresModes, onOff(adaptive)) {
				continue
			}
			for _, tiering := range []bool{true, false} {
				row := figureRow(t, n, tiering, adaptive)
				t.Log(row)
				rows = append(rows, row)
			}
		}
	}
	fmt.Println("| N | tiering | adaptive k/α | success | success, 20% churn | hops p50/p99 | latency p50/p99 | msgs/lookup | k/α after | heap/node |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func figureRow(t *testing.T, n int, tiering, adaptive bool) string {
	var row string
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		cfg := simConfig(n, 7)
		cfg.DHT.DisableTiering = !tiering
		cfg.DHT.FixedKAlpha = !adaptive
		base := HeapBytes()
		c := settledCluster(t, ctx, cfg)
		perNode := (HeapBytes() - base) / uint64(n)
		s := Summarize(c.Resolve(ctx, 2000, 20))
		st := c.Nodes()[0].DHT.Stats()
		ka := fmt.Sprintf("%d/%d", st.K, st.Alpha)

		// Then replace 20% of the nodes over 10 virtual minutes while
		// lookups continue.
		done := make(chan struct{})
		var churnErr error
		go func() {
			defer close(done)
			churnErr = c.Churn(ctx, n/5, 10*time.Minute/time.Duration(n/5))
		}()
		cs := Summarize(c.ResolveUntil(ctx, done, 5, 3*time.Second))
		if churnErr != nil {
			t.Fatal(churnErr)
		}
		row = fmt.Sprintf("| %d | %s | %s | %.2f%% | %.2f%% (%d lookups) | %d/%d | %v/%v | %.1f | %s | %.0f KiB |",
			n, onOff(tiering), onOff(adaptive), 100*s.Success, 100*cs.Success, cs.Lookups,
			s.HopsP50, s.HopsP99, s.LatencyP50.Round(time.Millisecond), s.LatencyP99.Round(time.Millisecond),
			s.MessagesMean, ka, float64(perNode)/1024)
	})
	return row
}
