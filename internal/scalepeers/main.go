// Command scalepeers runs many in-process overlay nodes that all keep a
// connection to one target node, so scripts/scale.sh can measure what each
// connected peer costs the target. Test tooling only.
//
//	scalepeers run -bootstrap ID@HOST:PORT -n N [-dht 20] [-host 127.0.0.1] [-pow-bits 0] [-timeout 5m]
//
// It prints "connected N" once 99% of the nodes (N of them) hold their
// connection to the target, then stays up (idle) until SIGINT/SIGTERM, and exits non-zero if
// the nodes do not all connect within -timeout.
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/internal/tool"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
)

func main() {
	_, fs := tool.Args("scalepeers", "run")
	boot := fs.String("bootstrap", "", "the target node, IDENTITY@HOST:PORT")
	n := fs.Int("n", 100, "nodes to run")
	host := fs.String("host", "127.0.0.1", "address the nodes listen on")
	pow := fs.Int("pow-bits", 0, "proof-of-work bits of the network (0: none)")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up when not all are connected by then")
	dhtN := fs.Int("dht", 20, "nodes that run the DHT (the others hold their connection only)")
	fs.Parse(os.Args[2:])
	if *boot == "" {
		tool.Fail("scalepeers", fmt.Errorf("-bootstrap IDENTITY@HOST:PORT is required"))
	}
	target, err := overlay.ParseContact(*boot)
	if err != nil {
		tool.Fail("scalepeers", err)
	}
	// Many nodes in one process: keep the collector from holding several
	// times the live heap.
	debug.SetGCPercent(50)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, target, *n, *dhtN, *host, *pow, *timeout); err != nil {
		tool.Fail("scalepeers", err)
	}
}

func run(ctx context.Context, target overlay.Contact, n, dhtNodes int, host string, powBits int, timeout time.Duration) error {
	if powBits == 0 {
		powBits = -1 // overlay: negative means none
	}
	nodes := make([]*overlay.Node, 0, n)
	defer func() {
		var wg sync.WaitGroup
		for _, nd := range nodes {
			wg.Add(1)
			go func() { defer wg.Done(); nd.Close() }()
		}
		wg.Wait()
	}()
	for i := 0; i < n; i++ {
		kp, err := pki.GenerateKeypair(ctx, max(powBits, 0))
		if err != nil {
			return err
		}
		nd, err := overlay.New(overlay.Config{
			Keypair:   kp,
			PoWBits:   powBits,
			Listen:    netip.AddrPortFrom(netip.MustParseAddr(host), 0).String(),
			Device:    newIdleDevice(),
			Bootstrap: []overlay.Contact{target},
			// The DHT on the first dhtNodes only: a thousand nodes on one
			// host looking each other up hold tens of thousands of
			// connections among themselves and starve this process (its
			// nodes then miss keep-alives and redial the target); what a
			// DHT costs a node is nodesim's figure. Without any, the
			// target's own join would fail and retry against every peer.
			DisableDHT: i >= dhtNodes,
			DHT:        dht.Config{MaxPerPrefixPerBucket: dht.MaxK, InsertBurst: 1000}, // all on one host
		})
		if err != nil {
			return fmt.Errorf("node %d: %v", i, err)
		}
		nodes = append(nodes, nd)
	}
	deadline := time.Now().Add(timeout)
	up := 0
	for {
		up = 0
		for _, nd := range nodes {
			if connectedTo(nd, target.Identity) {
				up++
			}
		}
		// 99%: on a loaded host a few of a thousand in-process nodes miss
		// keep-alives and redial at any moment; scale.sh counts the
		// target's peers itself.
		if up >= n*99/100 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d nodes connected to %s within %v", up, n, target.Identity.Short(), timeout)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second): // Status of a thousand nodes is not free
		}
	}
	fmt.Printf("connected %d\n", up)
	<-ctx.Done()
	return nil
}

func connectedTo(nd *overlay.Node, id pki.Identity) bool {
	want := id.String()
	for _, p := range nd.Status().Peers {
		if p.Identity == want {
			return true
		}
	}
	return false
}

// idleDevice is a packet device that never produces a packet and drops
// what is written: the peers only hold connections, and a netstack per node
// would dominate the tool's own memory.
type idleDevice struct {
	closed chan struct{}
	once   sync.Once
	writes atomic.Uint64
}

func newIdleDevice() *idleDevice { return &idleDevice{closed: make(chan struct{})} }

func (d *idleDevice) File() *os.File           { return nil }
func (d *idleDevice) MTU() (int, error)        { return overlay.DefaultMTU, nil }
func (d *idleDevice) Name() (string, error)    { return "idle", nil }
func (d *idleDevice) Events() <-chan tun.Event { return nil }
func (d *idleDevice) BatchSize() int           { return 1 }
func (d *idleDevice) Close() error             { d.once.Do(func() { close(d.closed) }); return nil }

func (d *idleDevice) Read([][]byte, []int, int) (int, error) {
	<-d.closed
	return 0, os.ErrClosed
}

func (d *idleDevice) Write(bufs [][]byte, _ int) (int, error) {
	d.writes.Add(uint64(len(bufs)))
	return len(bufs), nil
}
