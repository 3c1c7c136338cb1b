package nodesim

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestMain(m *testing.M) {
	// Sample the heap finely enough for a per-component breakdown of a few
	// KiB per node (the default samples every 512 KiB).
	runtime.MemProfileRate = 16 << 10
	os.Exit(m.Run())
}

var (
	nodes       = flag.Int("nodesim.n", 250, "nodes of TestNodes")
	figures     = flag.String("nodesim.figures", "", "comma-separated network sizes to print the SCALE.md figures for (e.g. 1000,10000)")
	churnFor    = flag.Duration("nodesim.churn", 10*time.Minute, "with -nodesim.figures: virtual time over which 20% of the nodes are replaced (0: no churn, publishing or idle window)")
	idleFor     = flag.Duration("nodesim.idle", 10*time.Minute, "with -nodesim.figures: virtual idle window for the messages per node per second")
	joinPar     = flag.Int("nodesim.joinparallel", 0, "with -nodesim.figures: nodes bootstrapping at once (0: N/20)")
	heapProfile = flag.String("nodesim.heapprofile", "", "write a heap profile of the end measurement to this file, and those after settling and at the churn phase's end to FILE.settled and FILE.churn")
	maxHeap     = flag.String("nodesim.maxheap", "14GiB", "stop the run when the live heap passes this (protects a shared machine)")
)

// TestNodes runs whole nodes (250 by default, -nodesim.n for more) through
// a short version of the figures' scenario (10% churn in 20 virtual
// seconds) and asserts what the node promises: lookups and deliveries
// succeed, the peer table stays within its cap, and a node's memory stays
// within the reference's 5 MB. The cap is lowered to 64 connections so
// that, at this size, connections are evicted (the default 1,000 is
// reached only in much larger networks) and lookups and pubsub must
// survive the evictions.
func TestNodes(t *testing.T) {
	sc := Scenario{Settle: 5 * time.Second, Lookups: 300, Churn: 20 * time.Second, ChurnFraction: 0.1,
		PublishEvery: 5 * time.Second, Quiet: 5 * time.Second, Idle: 5 * time.Second}
	if testing.Verbose() {
		sc.Progress = os.Stderr
	}
	cfg := Config{N: *nodes, JoinParallel: max(*nodes/2, 1), MaxPeers: 64}
	f := run(t, cfg, sc)
	t.Log("\n" + f.Report())
	check := func(ok bool, format string, a ...any) {
		t.Helper()
		if !ok {
			t.Errorf(format, a...)
		}
	}
	check(f.Lookups.Success >= 0.999, "lookup success %.4f, want >= 0.999", f.Lookups.Success)
	check(f.Lookups.HopsP99 <= 6, "p99 hops %d", f.Lookups.HopsP99)
	check(f.ChurnLookups.Lookups >= 50 && f.ChurnLookups.Success >= 0.99, "under churn: %v, want >= 99%% of >= 50", f.ChurnLookups)
	for _, d := range []struct {
		topic string
		d     Delivery
	}{{TopicAll, f.All}, {TopicSubset, f.Subset}} {
		check(d.d.Messages >= 2 && d.d.Pairs > 0, "%s: %d messages, %d receiver pairs", d.topic, d.d.Messages, d.d.Pairs)
		check(d.d.Ratio >= 0.99, "%s: delivered %.4f under churn, want >= 0.99", d.topic, d.d.Ratio)
		check(d.d.P99 < 2*time.Second, "%s: p99 latency %v", d.topic, d.d.P99)
	}
	check(f.End.Conns.Max <= cfg.MaxPeers, "a node has %d connections, above MaxPeers (%d)", f.End.Conns.Max, cfg.MaxPeers)
	check(f.LRU > 0, "no connection was evicted by the cap of %d (connections %v)", cfg.MaxPeers, f.End.Conns)
	check(f.End.Heap <= 5<<20, "heap per node %d KiB, above the reference's 5 MB", f.End.Heap>>10)
	// An idle connection costs no goroutine: a node runs its DHT's two,
	// its router's loop and subscription readers, not one per peer.
	check(f.End.Goroutines <= 8, "%.1f goroutines per node (%v connections)", f.End.Goroutines, f.End.Conns)
	check(f.End.Stack <= 64<<10, "stacks %d KiB per node", f.End.Stack>>10)
}

// TestFigures prints the figures of SCALE.md. It runs only when
// -nodesim.figures is given, because N = 10,000 takes long:
//
//	go test ./internal/nodesim -run TestFigures -v -timeout 6h -args -nodesim.figures=1000,10000
func TestFigures(t *testing.T) {
	if *figures == "" {
		t.Log("figures not requested (-nodesim.figures=1000,10000)")
		return
	}
	var out []string
	for _, s := range strings.Split(*figures, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 10 {
			t.Fatalf("bad size %q", s)
		}
		sc := Scenario{Churn: *churnFor, Idle: *idleFor, MeasureSettled: true, Progress: os.Stderr}
		if sc.Churn == 0 {
			sc.Churn = -1
		}
		f := run(t, Config{N: n, JoinParallel: *joinPar}, sc)
		out = append(out, f.Report())
		fmt.Fprint(os.Stderr, f.Report())
	}
	fmt.Println(strings.Join(out, "\n"))
}

// run runs one simulation in a bubble, with the heap watchdog and the
// optional heap profile, and reports its wall time.
func run(t *testing.T, cfg Config, sc Scenario) Figures {
	t.Helper()
	limit, err := parseBytes(*maxHeap)
	if err != nil {
		t.Fatalf("-nodesim.maxheap: %v", err)
	}
	// Let the collector work harder before the watchdog must stop the
	// run: without a limit the heap grows to twice the live heap (GOGC).
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(limit / 5 * 4)))
	stop := watchHeap(limit)
	defer stop()
	if *heapProfile != "" {
		pf, err := os.Create(*heapProfile)
		if err != nil {
			t.Fatal(err)
		}
		defer pf.Close()
		sc.HeapProfile = pf
		for _, x := range []struct {
			suffix string
			w      *io.Writer
		}{{".settled", &sc.SettledHeapProfile}, {".churn", &sc.ChurnHeapProfile}} {
			f, err := os.Create(*heapProfile + x.suffix)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			*x.w = f
		}
	}
	var f Figures
	wall := time.Now()
	synctest.Test(t, func(t *testing.T) {
		var err error
		if f, err = Run(cfg, sc); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("N=%d: wall %v, CPU %v", cfg.N, time.Since(wall).Round(time.Second), f.CPU.Round(time.Second))
	return f
}

// watchHeap ends the process when the live heap passes limit: a run that
// outgrows the machine must not take others' work with it. It polls in
// real time, outside the bubble.
func watchHeap(limit uint64) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > limit {
				fmt.Fprintf(os.Stderr, "nodesim: heap %d MiB passed -nodesim.maxheap (%d MiB): stopping\n", v>>20, limit>>20)
				os.Exit(3)
			}
		}
	}()
	return func() { close(done) }
}

func parseBytes(s string) (uint64, error) {
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		m      uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.m
			break
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size such as 14GiB", s)
	}
	return v * mult, nil
}
