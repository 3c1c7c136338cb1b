package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/smartaddr"
)

// pingReply is one answer of `korium-tun ping`.
type pingReply struct {
	Name     string        `json:"name,omitempty"`
	Identity string        `json:"identity"`
	Address  string        `json:"address"`
	Kind     string        `json:"kind"` // "direct" or "relay"
	Addr     string        `json:"addr"` // the peer's address, or the relay's
	Relay    string        `json:"relay,omitempty"`
	RTT      time.Duration `json:"rtt_ns"`
}

func pingCommand(controlFlag, jsonFlag cli.Flag, stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "ping",
		Usage:     "probe a peer's current path: prints whether traffic goes direct or through a relay, and the RTT",
		ArgsUsage: "NAME|IDENTITY|ADDRESS",
		Flags: []cli.Flag{controlFlag, jsonFlag,
			&cli.IntFlag{Name: "count", Aliases: []string{"c"}, Value: 4, Usage: "probes to send (0: until interrupted)"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "time between probes"},
		},
		Action: func(c *cli.Context) error {
			target, err := targetArg(c)
			if err != nil {
				return err
			}
			if c.Int("count") < 0 || c.Duration("interval") < 10*time.Millisecond {
				return errors.New("--count must be >= 0 and --interval at least 10ms")
			}
			got := 0
			var lastErr error
			for i := 0; c.Int("count") == 0 || i < c.Int("count"); i++ {
				if i > 0 {
					select {
					case <-c.Context.Done():
						return c.Context.Err()
					case <-time.After(c.Duration("interval")):
					}
				}
				ctx, cancel := context.WithTimeout(c.Context, 12*time.Second)
				var r pingReply
				err := control.Call(ctx, c.String("control"), "ping", map[string]string{"target": target}, &r)
				cancel()
				if err != nil {
					if !nodeListening(c.String("control")) {
						return err // no node to ask: the same error three more times says nothing
					}
					lastErr = err
					fmt.Fprintf(stdout, "no reply: %v\n", err)
					continue
				}
				got++
				if c.Bool("json") {
					json.NewEncoder(stdout).Encode(r)
					continue
				}
				who := r.Identity[:16]
				if r.Name != "" {
					who = r.Name
				}
				fmt.Fprintf(stdout, "pong from %s (%s) via %s %s in %s\n", who, r.Address, r.Kind, r.Addr, r.RTT.Round(time.Microsecond))
			}
			if got == 0 {
				return fmt.Errorf("no reply from %s: %v", target, lastErr)
			}
			return nil
		},
	}
}

// nodeListening reports whether a node answers at the control socket path.
func nodeListening(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// pingOnce resolves target (connecting if needed) and probes its path.
func pingOnce(ctx context.Context, node *overlay.Node, nn *nodeNames, target string) (pingReply, error) {
	id, err := resolveTarget(ctx, node, nn, target)
	if err != nil {
		return pingReply{}, err
	}
	if err := node.ConnectIdentity(ctx, id); err != nil {
		if errors.Is(err, dht.ErrNotFound) || errors.Is(err, dht.ErrNoPeers) {
			return pingReply{}, resolveError(target, err)
		}
		return pingReply{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, err := node.Ping(pctx, id)
	if err != nil {
		return pingReply{}, fmt.Errorf("probe of %s: %v", id.Short(), err)
	}
	return pingReply{Name: nn.table.NameOf(id), Identity: id.String(), Address: smartaddr.FromIdentity(id).String(), Kind: r.Path.Kind, Addr: r.Path.Addr, Relay: r.Path.Relay, RTT: r.RTT}, nil
}
