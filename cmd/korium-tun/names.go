package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/names"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// nodeNames is the running node's names table and the file behind it.
type nodeNames struct {
	table *names.Table
	mu    sync.Mutex // serializes changes and their saves; guards path
	path  string
}

func loadNodeNames(path string) (*nodeNames, error) {
	t, err := names.Load(path)
	if err != nil {
		return nil, err
	}
	return &nodeNames{table: t, path: path}, nil
}

// reload reads the names file again (SIGHUP), possibly from a new path.
func (nn *nodeNames) reload(path string) (int, error) {
	nn.mu.Lock()
	defer nn.mu.Unlock()
	t, err := names.Load(path)
	if err != nil {
		return 0, err
	}
	nn.path = path
	nn.table.Replace(t)
	return t.Len(), nil
}

// change applies f to the table and saves it; if the save fails, the table
// is restored, so memory and file agree.
func (nn *nodeNames) change(f func(*names.Table) error) error {
	nn.mu.Lock()
	defer nn.mu.Unlock()
	before := names.NewTable()
	before.Replace(nn.table)
	if err := f(nn.table); err != nil {
		return err
	}
	if err := nn.table.Save(nn.path); err != nil {
		nn.table.Replace(before)
		return fmt.Errorf("%v (set names_file to a writable path)", err)
	}
	return nil
}

// nameEntry is one name as the names commands print it.
type nameEntry struct {
	Name     string `json:"name"`
	Identity string `json:"identity"`
	Address  string `json:"address"`
}

func entryOf(name string, id pki.Identity) nameEntry {
	return nameEntry{Name: name, Identity: id.String(), Address: smartaddr.FromIdentity(id).String()}
}

// isName reports whether s is written like a name (not an identity or an
// address): the CLI then leaves it to the node's names table.
func isName(s string) bool { return names.CheckName(names.Canonical(s)) == nil }

// resolveTarget turns a peer argument (identity, SmartAddr or name) into an
// identity. An address whose owner is not connected is looked up in the DHT.
func resolveTarget(ctx context.Context, node *overlay.Node, nn *nodeNames, target string) (pki.Identity, error) {
	if isName(target) && nn != nil {
		if id, ok := nn.table.Lookup(target); ok {
			return id, nil
		}
		return pki.Identity{}, fmt.Errorf("no peer is named %q on this node (korium-tun names list shows the names; names add sets one)", names.Canonical(target))
	}
	t, err := parseTarget(target)
	if err != nil {
		return pki.Identity{}, err
	}
	switch t := t.(type) {
	case pki.Identity:
		return t, nil
	case netip.Addr:
		id, err := node.OwnerOf(ctx, t)
		if err != nil {
			return pki.Identity{}, resolveError(t.String(), err)
		}
		return id, nil
	}
	return pki.Identity{}, fmt.Errorf("%q is not a peer", target)
}

// resolveError says what a failed DHT resolution means to a user.
func resolveError(what string, err error) error {
	if errors.Is(err, dht.ErrNotFound) {
		return fmt.Errorf("no contact record for %s in the DHT: that node is not running, not connected to this network, or has not published yet (a node publishes within seconds of joining)", what)
	}
	if errors.Is(err, dht.ErrNoPeers) {
		return fmt.Errorf("cannot resolve %s: this node's DHT knows no other node yet (it joins seconds after its first peer connects; a node without peers needs --bootstrap)", what)
	}
	return fmt.Errorf("resolving %s: %v", what, err)
}

// namesHandlers registers names_add, names_rm and names_list.
func namesHandlers(node *overlay.Node, nn *nodeNames, h map[string]control.Handler) {
	h["names_add"] = func(ctx context.Context, args json.RawMessage) (any, error) {
		var a struct{ Name, Target string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		name := names.Canonical(a.Name)
		if err := names.CheckName(name); err != nil {
			return nil, err
		}
		if isName(a.Target) {
			return nil, fmt.Errorf("%q: give the peer's IDENTITY (64 hex) or ADDRESS (fd00:c0f1:...)", a.Target)
		}
		id, err := resolveTarget(ctx, node, nn, a.Target)
		if err != nil {
			return nil, err
		}
		if err := nn.change(func(t *names.Table) error { return t.Add(name, id) }); err != nil {
			return nil, err
		}
		return entryOf(name, id), nil
	}
	h["names_rm"] = func(_ context.Context, args json.RawMessage) (any, error) {
		var a struct{ Name string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		name := names.Canonical(a.Name)
		return nil, nn.change(func(t *names.Table) error {
			if !t.Remove(name) {
				return fmt.Errorf("no peer is named %q (korium-tun names list shows the names)", name)
			}
			return nil
		})
	}
	h["names_list"] = func(context.Context, json.RawMessage) (any, error) {
		out := []nameEntry{}
		for _, e := range nn.table.List() {
			out = append(out, entryOf(e.Name, e.Identity))
		}
		return out, nil
	}
}

func namesCommand(controlFlag, jsonFlag cli.Flag, stdout io.Writer) *cli.Command {
	call := func(c *cli.Context, cmd string, args, out any) error {
		ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
		defer cancel()
		return control.Call(ctx, c.String("control"), cmd, args, out)
	}
	return &cli.Command{
		Name:  "names",
		Usage: "names for peers on the running node (NAME.korium in DNS, and accepted by ping, resolve, chat)",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "name a peer; the node writes its names file",
				ArgsUsage: "NAME IDENTITY|ADDRESS",
				Flags:     []cli.Flag{controlFlag},
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return errors.New("names add takes NAME and the peer's IDENTITY (64 hex) or ADDRESS (fd00:c0f1:...)")
					}
					if err := names.CheckName(names.Canonical(c.Args().Get(0))); err != nil {
						return err
					}
					var e nameEntry
					if err := call(c, "names_add", map[string]string{"name": c.Args().Get(0), "target": c.Args().Get(1)}, &e); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "%s.%s is %s (%s)\n", e.Name, names.Domain, e.Identity, e.Address)
					return nil
				},
			},
			{
				Name:      "rm",
				Usage:     "remove a name",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{controlFlag},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("names rm takes one NAME")
					}
					return call(c, "names_rm", map[string]string{"name": c.Args().First()}, nil)
				},
			},
			{
				Name:  "list",
				Usage: "list the names",
				Flags: []cli.Flag{controlFlag, jsonFlag},
				Action: func(c *cli.Context) error {
					var list []nameEntry
					if err := call(c, "names_list", nil, &list); err != nil {
						return err
					}
					if c.Bool("json") {
						if list == nil {
							list = []nameEntry{}
						}
						return printIndented(stdout, list)
					}
					if len(list) == 0 {
						fmt.Fprintln(stdout, "no names yet: korium-tun names add NAME IDENTITY|ADDRESS")
						return nil
					}
					tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tIDENTITY\tADDRESS")
					for _, e := range list {
						fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Name, e.Identity, e.Address)
					}
					return tw.Flush()
				},
			},
		},
	}
}

// nameOr returns a peer's name if it has one, else the first n characters
// of its identity.
func nameOr(nm map[string]string, identity string, n int) string {
	if name := nm[identity]; name != "" {
		return name
	}
	if len(identity) > n {
		return identity[:n]
	}
	return identity
}

// fetchNames asks the node for identity -> name (empty if it cannot).
func fetchNames(ctx context.Context, path string) map[string]string {
	var list []nameEntry
	out := map[string]string{}
	if control.Call(ctx, path, "names_list", nil, &list) == nil {
		for _, e := range list {
			out[e.Identity] = e.Name
		}
	}
	return out
}
