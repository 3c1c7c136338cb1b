package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// pingReply is one answer of `korium-tun ping`.
type pingReply struct {
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
		ArgsUsage: "IDENTITY|ADDRESS",
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
					lastErr = err
					fmt.Fprintf(stdout, "no reply: %v\n", err)
					continue
				}
				got++
				if c.Bool("json") {
					json.NewEncoder(stdout).Encode(r)
					continue
				}
				fmt.Fprintf(stdout, "pong from %s (%s) via %s %s in %s\n", r.Identity[:16], r.Address, r.Kind, r.Addr, r.RTT.Round(time.Microsecond))
			}
			if got == 0 {
				return fmt.Errorf("no reply from %s: %v", target, lastErr)
			}
			return nil
		},
	}
}

// pingOnce resolves target (connecting if needed) and probes its path.
func pingOnce(ctx context.Context, node *overlay.Node, target string) (pingReply, error) {
	t, err := parseTarget(target)
	if err != nil {
		return pingReply{}, err
	}
	var id pki.Identity
	switch t := t.(type) {
	case pki.Identity:
		id = t
	case netip.Addr:
		if id, err = node.OwnerOf(ctx, t); err != nil {
			return pingReply{}, err
		}
	}
	if err := node.ConnectIdentity(ctx, id); err != nil {
		return pingReply{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, err := node.Ping(pctx, id)
	if err != nil {
		return pingReply{}, fmt.Errorf("probe of %s: %v", id.Short(), err)
	}
	return pingReply{Identity: id.String(), Address: smartaddr.FromIdentity(id).String(), Kind: r.Path.Kind, Addr: r.Path.Addr, Relay: r.Path.Relay, RTT: r.RTT}, nil
}
