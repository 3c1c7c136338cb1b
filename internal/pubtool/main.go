// Command pubtool runs one pubsub node for scripts/pubsub-subnet-test.sh:
// an in-process overlay node (gVisor netstack, real UDP) that subscribes to
// a topic, publishes when told to and reports what it received. Test
// tooling only.
//
//	pubtool node -index I -listen HOST:PORT -dir DIR [-bootstrap ID@HOST:PORT]
//	    [-topic T] [-publishers 1,4,7] [-count N] [-flood] [-pow N]
//
// It talks to the script through files in DIR (each written atomically):
//
//	contact.I  its IDENTITY@HOST:PORT, once the node runs
//	ready.I    once its mesh holds at least D_lo peers
//	go         (made by the script) start publishing: if I is one of the
//	           publishers, N messages "I K", K = 0..N-1, 20 ms apart
//	result.I   JSON, rewritten every 200 ms: what it received, its mesh
//
// Flood publishing is off unless -flood: a message then reaches a node only
// through a mesh (or gossip), which is what the script checks.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/internal/tool"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
)

// Result is what result.I holds.
type Result struct {
	Index      int  `json:"index"`
	Expected   int  `json:"expected"`    // messages published by the others
	Received   int  `json:"received"`    // distinct ones received
	Forwarded  int  `json:"forwarded"`   // of those, first copies relayed by a node other than the publisher
	FromMesh   int  `json:"from_mesh"`   // first copies that came from a mesh peer (router count)
	TopicPeers int  `json:"topic_peers"` // now
	Mesh       int  `json:"mesh"`        // mesh peers now
	MeshAtGo   int  `json:"mesh_at_go"`  // mesh peers when publishing started
	MeshMin    int  `json:"mesh_min"`    // fewest mesh peers seen from then on
	IWant      int  `json:"iwant"`       // messages this node served on IWANT
	Graylisted int  `json:"graylisted"`  // RPCs it dropped from graylisted peers
	Published  int  `json:"published"`
	Done       bool `json:"done"` // received == expected
}

func main() {
	_, fs := tool.Args("pubtool", "node")
	index := fs.Int("index", 0, "this node's number (1..)")
	listen := fs.String("listen", "", "UDP address HOST:PORT")
	dir := fs.String("dir", "", "directory shared with the script")
	boot := fs.String("bootstrap", "", "IDENTITY@HOST:PORT of a node to join through")
	topic := fs.String("topic", "subnet", "topic")
	pubs := fs.String("publishers", "", "comma-separated indexes of the publishing nodes")
	count := fs.Int("count", 20, "messages per publisher")
	flood := fs.Bool("flood", false, "publish by flooding every topic peer (default: mesh only)")
	pow := fs.Int("pow", 8, "proof-of-work bits")
	fs.Parse(os.Args[2:])
	if err := run(*index, *listen, *dir, *boot, *topic, *pubs, *count, *flood, *pow); err != nil {
		tool.Fail("pubtool", err)
	}
}

func run(index int, listen, dir, boot, topic, pubList string, count int, flood bool, pow int) error {
	if index < 1 || dir == "" || listen == "" {
		return errors.New("need -index >= 1, -listen and -dir")
	}
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("-listen: %v", err)
	}
	var publishers []int
	for _, f := range strings.Split(pubList, ",") {
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 {
			return fmt.Errorf("-publishers: %q is not an index", f)
		}
		publishers = append(publishers, p)
	}
	kp, err := pki.GenerateKeypair(context.Background(), pow)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := overlay.Config{Keypair: kp, PoWBits: pow, Listen: listen, Logger: log,
		PubSub: gossipsub.Config{DisableFloodPublish: !flood}}
	if boot != "" {
		c, err := overlay.ParseContact(boot)
		if err != nil {
			return err
		}
		cfg.Bootstrap = []overlay.Contact{c}
	}
	n, err := overlay.New(cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	sub, err := n.Subscribe(topic)
	if err != nil {
		return err
	}
	file := func(name string) string { return filepath.Join(dir, fmt.Sprintf("%s.%d", name, index)) }
	if err := writeAtomic(file("contact"), []byte(n.Contact(ap.Addr()).String()+"\n")); err != nil {
		return err
	}

	res := Result{Index: index, MeshMin: -1}
	for _, p := range publishers {
		if p != index {
			res.Expected += count
		}
	}
	var mu sync.Mutex // guards res and seen
	seen := make(map[string]bool)
	go func() {
		for m := range sub.Messages() {
			k := m.From.String() + "/" + string(m.Data)
			mu.Lock()
			if !seen[k] {
				seen[k] = true
				res.Received++
				if m.ReceivedFrom != m.From {
					res.Forwarded++
				}
			}
			mu.Unlock()
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dlo := gossipsub.DefaultConfig().Dlo
	ready, started := false, false
	publish := slices.Contains(publishers, index)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	update := func() error {
		peers := n.TopicPeers(topic)
		mesh := 0
		for _, p := range peers {
			if p.InMesh {
				mesh++
			}
		}
		st, _ := n.PubSubStats()
		mu.Lock()
		res.TopicPeers, res.Mesh = len(peers), mesh
		if started && (res.MeshMin < 0 || mesh < res.MeshMin) {
			res.MeshMin = mesh
		}
		res.IWant, res.Graylisted, res.FromMesh = int(st.IWantServed), int(st.DropGraylisted), int(st.DeliveredMesh)
		res.Done = res.Received == res.Expected
		b, _ := json.Marshal(res)
		mu.Unlock()
		if !ready && mesh >= dlo {
			ready = true
			if err := writeAtomic(file("ready"), []byte(strconv.Itoa(mesh)+"\n")); err != nil {
				return err
			}
		}
		return writeAtomic(file("result"), append(b, '\n'))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if !started {
			if _, err := os.Stat(filepath.Join(dir, "go")); err == nil {
				started = true
				mu.Lock()
				res.MeshAtGo = res.Mesh
				mu.Unlock()
				if publish {
					go func() {
						for k := 0; k < count && ctx.Err() == nil; k++ {
							if err := n.Publish(topic, fmt.Appendf(nil, "%d %d", index, k)); err != nil {
								log.Warn("publish failed", "err", err)
								continue
							}
							mu.Lock()
							res.Published++
							mu.Unlock()
							time.Sleep(20 * time.Millisecond)
						}
					}()
				}
			}
		}
		if err := update(); err != nil {
			return err
		}
	}
}

func writeAtomic(name string, b []byte) error {
	if err := os.WriteFile(name+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(name+".tmp", name)
}
