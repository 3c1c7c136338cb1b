// Command korium-tun runs an overlay node with a kernel TUN device and
// talks to a running node through its control socket.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/overlay"
	ktun "github.com/korium/korium-tun/overlay/tun"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

const defaultKeyPath = "/var/lib/korium-tun/key"

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "korium-tun:", err)
		os.Exit(1)
	}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	powFlag, controlFlag := powBitsFlag(), controlPathFlag()
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON"}
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, readBuildInfo()) }
	var ucfg *upConfig // up's config file, read by up's Before
	app := &cli.App{
		Name:      "korium-tun",
		Usage:     "a zero-configuration overlay network: every node is an Ed25519 identity with an IPv6 address in fd00:c0f1::/32",
		Version:   readBuildInfo().Version,
		Writer:    stdout,
		ErrWriter: stderr,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return fmt.Errorf("%v (see --help)", err)
		},
		// Without this, an unknown command prints "No help topic" and
		// exits 3 without saying which program complained.
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unknown command %q: `korium-tun --help` lists the commands", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		Commands: []*cli.Command{
			{
				Name:  "keygen",
				Usage: "create a new identity key file (never overwrites one)",
				Flags: []cli.Flag{&cli.StringFlag{Name: "key", Required: true, Usage: "key file to create"}, powFlag},
				Action: func(c *cli.Context) error {
					if err := checkPoWFlag(c.Int("pow-bits")); err != nil {
						return err
					}
					path := c.String("key")
					if err := pki.CheckNewKeyPath(path); err != nil {
						return err
					}
					kp, err := generate(c.Context, stderr, c.Int("pow-bits"))
					if err != nil {
						return err
					}
					if err := pki.SaveKeyFile(path, kp); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "identity %s\naddress %s\n", kp.Identity(), smartaddr.FromIdentity(kp.Identity()))
					return nil
				},
			},
			{
				Name:  "id",
				Usage: "print the identity and SmartAddr of a key file",
				Flags: []cli.Flag{&cli.StringFlag{Name: "key", Value: defaultKeyPath, Usage: "identity key file (the one up uses by default)"}, jsonFlag},
				Action: func(c *cli.Context) error {
					kp, err := pki.LoadKeyFile(c.String("key"))
					if err != nil {
						return err
					}
					id, addr := kp.Identity().String(), smartaddr.FromIdentity(kp.Identity()).String()
					if c.Bool("json") {
						return json.NewEncoder(stdout).Encode(map[string]string{"identity": id, "address": addr})
					}
					fmt.Fprintf(stdout, "identity %s\naddress %s\n", id, addr)
					return nil
				},
			},
			{
				Name:  "up",
				Usage: "run a node in the foreground with a kernel TUN device (needs root)",
				Description: "Unless GOGC or GOMEMLIMIT is set in its environment, up runs Go's garbage collector at\n" +
					"GOGC=25 (a collection when the heap grew by a quarter): about 90 MiB resident with 1,000 idle\n" +
					"peers instead of 110-130 at Go's default of 100, for a little more collector CPU (SCALE.md).",
				Flags: append(upFlags(), &cli.StringFlag{Name: configFlag, Value: defaultConfigPath,
					Usage: "YAML config file: every flag of up as a key in snake_case (korium-tun config init writes one); read if present"}),
				Before: func(c *cli.Context) (err error) {
					ucfg, err = loadUpConfig(c, upFlags())
					return err
				},
				Action: func(c *cli.Context) error { return up(c, ucfg, stdout, stderr) },
			},
			{
				Name:      "resolve",
				Usage:     "look up a peer's signed contact record by name, identity or SmartAddr through the DHT",
				ArgsUsage: "NAME|IDENTITY|ADDRESS",
				Flags:     []cli.Flag{controlFlag, jsonFlag},
				Action: func(c *cli.Context) error {
					target, err := targetArg(c)
					if err != nil {
						return err
					}
					ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
					defer cancel()
					var rec recordJSON
					if err := control.Call(ctx, c.String("control"), "resolve", map[string]string{"target": target}, &rec); err != nil {
						return err
					}
					if c.Bool("json") {
						return json.NewEncoder(stdout).Encode(rec)
					}
					if rec.Name != "" {
						fmt.Fprintf(stdout, "name     %s.korium\n", rec.Name)
					}
					fmt.Fprintf(stdout, "identity %s\naddress  %s\naddrs    %s\nseq      %d\nexpires  %s\n", rec.Identity, rec.Address,
						strings.Join(rec.Addrs, " "), rec.Seq, rec.Expires.Format(time.RFC3339))
					return nil
				},
			},
			{
				Name:  "peers",
				Usage: "show the DHT routing table: buckets, latency tiers, contacts",
				Flags: []cli.Flag{controlFlag, jsonFlag},
				Action: func(c *cli.Context) error {
					var snap peersJSON
					if err := query(c, "peers", &snap); err != nil {
						return err
					}
					if c.Bool("json") {
						return printIndented(stdout, snap)
					}
					fmt.Fprintf(stdout, "k %d  alpha %d  tiers %v\n", snap.K, snap.Alpha, snap.Tiers)
					if len(snap.Buckets) == 0 {
						fmt.Fprintln(stdout, "the routing table is empty: this node has not met another node yet (is a --bootstrap peer given and reachable?)")
						return nil
					}
					tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "BUCKET	IDENTITY	ADDRS	TIER	RTT	LAST SEEN")
					for _, b := range snap.Buckets {
						for _, ct := range b.Contacts {
							var addrs []string
							for _, a := range ct.Addrs {
								addrs = append(addrs, a.String())
							}
							fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s ago\n", b.Index, nameOr(snap.Names, ct.Identity.String(), 16), strings.Join(addrs, ","),
								ct.Tier, ct.RTT.Round(10*time.Microsecond), time.Since(ct.LastSeen).Round(time.Second))
						}
					}
					return tw.Flush()
				},
			},
			pingCommand(controlFlag, jsonFlag, stdout),
			{
				Name:  "status",
				Usage: "show the running node's peers and counters",
				Flags: []cli.Flag{controlFlag, jsonFlag},
				Action: func(c *cli.Context) error {
					var st statusJSON
					if err := query(c, "status", &st); err != nil {
						return err
					}
					if c.Bool("json") {
						return printIndented(stdout, st)
					}
					printStatus(stdout, st)
					return nil
				},
			},
		},
	}
	app.Commands = append(app.Commands, chatCommand(os.Stdin, stdout, stderr), namesCommand(controlFlag, jsonFlag, stdout),
		configCommand(stdout), versionCommand(stdout, jsonFlag),
		caCommand(controlFlag, stdout, stderr), certCommand(controlFlag, jsonFlag, stdout, stderr))
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}
	return app
}

// targetArg returns the one IDENTITY|ADDRESS argument of resolve and ping.
func targetArg(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s takes one peer: a NAME (korium-tun names list), an IDENTITY (64 hex) or an overlay ADDRESS (fd00:c0f1:...)", c.Command.Name)
	}
	target := c.Args().First()
	if isName(target) {
		return target, nil // the node knows its names
	}
	_, err := parseTarget(target)
	return target, err
}

// query asks the node behind --control for cmd, without arguments, and
// decodes its answer into out.
func query(c *cli.Context, cmd string, out any) error {
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
	defer cancel()
	return control.Call(ctx, c.String("control"), cmd, nil, out)
}

func printIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func checkPoWFlag(bits int) error {
	if bits < 0 || bits > pki.MaxPoWBits {
		return fmt.Errorf("--pow-bits %d is out of range 0..%d", bits, pki.MaxPoWBits)
	}
	return nil
}

// overlayPoW turns the --pow-bits value into overlay.Config.PoWBits, where
// 0 means "the default" and a negative value means none.
func overlayPoW(bits int) int {
	if bits == 0 {
		return -1
	}
	return bits
}

func generate(ctx context.Context, stderr io.Writer, bits int) (*pki.Keypair, error) {
	if bits >= 20 {
		fmt.Fprintf(stderr, "generating an identity with %d bits of proof of work (a few seconds)...\n", bits)
	}
	return pki.GenerateKeypair(ctx, bits)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// nodeFlags checks the flags every command that runs a node shares.
func nodeFlags(c *cli.Context) (level slog.Level, powBits int, err error) {
	if level, err = parseLevel(c.String("log-level")); err != nil {
		return level, 0, err
	}
	powBits = c.Int("pow-bits")
	return level, powBits, checkPoWFlag(powBits)
}

// parseBootstraps parses every --bootstrap flag.
func parseBootstraps(c *cli.Context) ([]overlay.Contact, error) {
	var boot []overlay.Contact
	for _, s := range c.StringSlice("bootstrap") {
		ct, err := overlay.ParseContact(s)
		if err != nil {
			return nil, fmt.Errorf("--bootstrap: %v", err)
		}
		boot = append(boot, ct)
	}
	return boot, nil
}

func up(c *cli.Context, ucfg *upConfig, stdout, stderr io.Writer) error {
	// Check every flag before touching anything.
	level, bits, err := nodeFlags(c)
	if err != nil {
		return err
	}
	mtu := c.Int("mtu")
	if mtu < overlay.MinMTU || mtu > overlay.MaxMTU {
		return fmt.Errorf("--mtu %d is out of range %d..%d", mtu, overlay.MinMTU, overlay.MaxMTU)
	}
	boot, err := parseBootstraps(c)
	if err != nil {
		return err
	}
	if err := checkSPIFFEFlags(c); err != nil {
		return err
	}
	fw, err := firewallConfig(c, ucfg)
	if err != nil {
		return err
	}
	if !canCreateTUN() {
		return errors.New("`korium-tun up` creates a TUN device and needs root: run it with sudo (Go programs can use the overlay without root through the overlay package's netstack)")
	}
	if err := control.CheckPath(c.String("control")); err != nil {
		return err
	}
	var logLevel slog.LevelVar // SIGHUP may change it
	logLevel.Set(level)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &logLevel}))
	log.Debug("collector", "setting", applyGCDefaults(os.Getenv))
	nn, err := loadNodeNames(c.String("names-file"))
	if err != nil {
		return fmt.Errorf("%s: %v", ucfg.optName("names-file"), err)
	}
	metricsLn, err := listenMetrics(c, ucfg)
	if err != nil {
		return err
	}
	if metricsLn != nil {
		defer metricsLn.Close() // until the metrics server owns it
	}
	if path := os.Getenv("KORIUM_TUN_CPUPROFILE"); path != "" { // a debugging aid for benchmarks
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("KORIUM_TUN_CPUPROFILE: %v", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	stopMemProfile, err := startMemProfile(log)
	if err != nil {
		return err
	}
	defer stopMemProfile()

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	keyPath := c.String("key")
	if _, err := os.Lstat(keyPath); errors.Is(err, os.ErrNotExist) && bits >= 20 {
		fmt.Fprintf(stderr, "no key at %s: generating an identity with %d bits of proof of work...\n", keyPath, bits)
	}
	kp, created, err := pki.LoadOrCreateKeyFile(ctx, keyPath, bits)
	if err != nil {
		return err
	}
	if created {
		log.Info("created identity key", "path", keyPath)
	}
	if err := pki.CheckPoW(kp.Identity(), kp.Nonce(), bits); err != nil {
		return fmt.Errorf("key %s: %v: use a key made with `korium-tun keygen --pow-bits %d`", keyPath, err, bits)
	}
	signer, err := loadCASigner(c.String("ca-signer"), kp)
	if err != nil {
		return err
	}
	members, err := loadMembers(c, kp, signer, stderr)
	if err != nil {
		return err
	}
	udp, err := overlay.ListenUDP(c.String("listen"))
	if err != nil {
		return err
	}
	addr := smartaddr.FromIdentity(kp.Identity())
	dev, err := ktun.Create(ktun.Config{Name: c.String("tun"), MTU: mtu, Addr: addr})
	if err != nil {
		udp.Close()
		return err
	}
	dnsConn, err := listenDNS(c, ucfg, addr) // needs addr on the TUN
	if err != nil {
		dev.Close()
		udp.Close()
		return err
	}
	if dnsConn != nil {
		defer dnsConn.Close() // until the DNS responder owns it
	}
	node, err := overlay.New(overlay.Config{
		Keypair: kp, PoWBits: overlayPoW(bits), Conn: udp, Device: dev, MTU: mtu, Bootstrap: boot, Logger: log,
		NoRelay: !c.Bool("relay"), TrustDomain: c.String("trust-domain"), Workload: c.String("workload"), CASigner: signer,
		CA: caConfig(c), Members: members, PeerCache: peerCachePath(keyPath), Firewall: fw,
	})
	if err != nil {
		return err
	}
	defer node.Close()
	handlers := controlHandlers(node, nn)
	chatHandlers(node, handlers)
	namesHandlers(node, nn, handlers)
	ctl, err := control.Listen(c.String("control"), handlers, log)
	if err != nil {
		return err
	}
	defer ctl.Close()
	chatControl(node, ctl)
	caControl(node, ctl)
	svc, err := startServices(ctx, c, node, nn, metricsLn, dnsConn, log)
	if err != nil {
		return err
	}
	defer svc.Close()

	for _, b := range bootstrapStrings(node) {
		fmt.Fprintf(stdout, "bootstrap %s\n", b)
	}
	fmt.Fprintf(stdout, "up identity=%s address=%s tun=%s mtu=%d\n", kp.Identity(), addr, c.String("tun"), mtu)
	if f, ok := stdout.(*os.File); ok {
		f.Sync()
	}
	// The TUN is up, the node listens, the control socket answers: ready.
	if ok, err := sdNotify("READY=1"); err != nil {
		log.Warn("cannot tell systemd that the node is ready", "err", err)
	} else if ok {
		log.Debug("told systemd the node is ready")
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	go func() { // a node that stops by itself (its device is gone) ends the run
		select {
		case <-node.Done():
			stopRun()
		case <-runCtx.Done():
		}
	}()
	svc.run(runCtx, ucfg, &logLevel)
	sdNotify("STOPPING=1")
	if err := node.Err(); err != nil {
		return err
	}
	log.Info("shutting down")
	return nil
}

// bootstrapStrings lists IDENTITY@HOST:PORT for every address others could
// use to reach this node.
func bootstrapStrings(n *overlay.Node) []string {
	var out []string
	for _, a := range n.AdvertisedAddrs() {
		out = append(out, overlay.Contact{Identity: n.Identity(), Addr: a}.String())
	}
	if len(out) == 0 {
		out = append(out, n.Contact(netip.MustParseAddr("127.0.0.1")).String())
	}
	return out
}

// parseTarget accepts an identity or an overlay address.
func parseTarget(s string) (any, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if !smartaddr.IsOverlay(a) {
			return nil, fmt.Errorf("%s is not an overlay address (fd00:c0f1::/32)", s)
		}
		return a, nil
	}
	id, err := pki.ParseIdentity(s)
	if err != nil {
		return nil, fmt.Errorf("%q is neither a name, an identity (64 lowercase hex) nor an overlay address (fd00:c0f1:...)", s)
	}
	return id, nil
}

// recordJSON is a contact record as `resolve` prints it.
type recordJSON struct {
	Name     string    `json:"name,omitempty"`
	Identity string    `json:"identity"`
	Address  string    `json:"address"`
	Addrs    []string  `json:"addrs"`
	Relays   []string  `json:"relays"`
	Seq      uint64    `json:"seq"`
	Expires  time.Time `json:"expires"`
}

// statusJSON is `status`'s answer: the node's Status and the names of its
// peers (identity -> name).
type statusJSON struct {
	overlay.Status
	Names map[string]string `json:"names"`
}

// peersJSON is `peers`'s answer: the routing table and the names.
type peersJSON struct {
	dht.Snapshot
	Names map[string]string `json:"names"`
}

func controlHandlers(node *overlay.Node, nn *nodeNames) map[string]control.Handler {
	return map[string]control.Handler{
		"status": func(context.Context, json.RawMessage) (any, error) {
			return statusJSON{Status: node.Status(), Names: nn.table.Map()}, nil
		},
		"peers": func(context.Context, json.RawMessage) (any, error) {
			snap, ok := node.DHTSnapshot()
			if !ok {
				return nil, errors.New("the DHT is disabled")
			}
			return peersJSON{Snapshot: snap, Names: nn.table.Map()}, nil
		},
		"ping": func(ctx context.Context, args json.RawMessage) (any, error) {
			var a struct{ Target string }
			if err := json.Unmarshal(args, &a); err != nil {
				return nil, err
			}
			return pingOnce(ctx, node, nn, a.Target)
		},
		"resolve": func(ctx context.Context, args json.RawMessage) (any, error) {
			var a struct{ Target string }
			if err := json.Unmarshal(args, &a); err != nil {
				return nil, err
			}
			var rec *dht.Record
			if t, err := parseTarget(a.Target); err == nil {
				if addr, ok := t.(netip.Addr); ok {
					if rec, err = node.ResolveAddr(ctx, addr); err != nil {
						return nil, resolveError(a.Target, err)
					}
				}
			}
			if rec == nil {
				id, err := resolveTarget(ctx, node, nn, a.Target)
				if err != nil {
					return nil, err
				}
				if rec, err = node.Resolve(ctx, id); err != nil {
					return nil, resolveError(a.Target, err)
				}
			}
			out := recordJSON{Name: nn.table.NameOf(rec.Identity), Identity: rec.Identity.String(), Address: smartaddr.FromIdentity(rec.Identity).String(), Seq: rec.Seq, Expires: rec.Expires}
			for _, ap := range rec.Addrs {
				out.Addrs = append(out.Addrs, ap.String())
			}
			for _, r := range rec.Relays {
				out.Relays = append(out.Relays, r.String())
			}
			return out, nil
		},
	}
}

func printStatus(w io.Writer, st statusJSON) {
	fmt.Fprintf(w, "identity %s\naddress  %s\nlisten   %s  mtu %d  up %s\n\n", st.Identity, st.Address, st.Listen, st.MTU, st.Uptime.Round(time.Second))
	if len(st.Peers) == 0 {
		fmt.Fprintln(w, "no peers connected (a --bootstrap peer brings the first; korium-tun ping NAME|ADDRESS connects on demand)")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(st.Peers) > 0 {
		fmt.Fprintln(tw, "PEER\tADDRESS\tPATH\tRTT\tTX\tRX\tDIR")
	}
	for _, p := range st.Peers {
		dir := "in"
		if p.Outbound {
			dir = "out"
		}
		path := p.Remote
		if p.Path != nil {
			path = p.Path.Kind + " " + p.Path.Addr
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d pkts / %s\t%d pkts / %s\t%s\n", nameOr(st.Names, p.Identity, 16), p.Address, path,
			p.RTT.Round(10*time.Microsecond), p.TxPackets, bytesString(p.TxBytes), p.RxPackets, bytesString(p.RxBytes), dir)
	}
	tw.Flush()
	nat := "public"
	if !st.NAT.Checked {
		nat = "not checked yet"
	} else if !st.NAT.Public {
		nat = fmt.Sprintf("behind NAT (seen as %s), relays %d", st.NAT.Observed, len(st.NAT.Relays))
	}
	fmt.Fprintf(w, "\nnat: %s\n", nat)
	printMembers(w, st.Members)
	if r := st.Relay; r != nil {
		fmt.Fprintf(w, "relay: %d sessions open, %d frames forwarded\n", r.Sessions, r.ForwardedFrames)
	}
	if pc := st.PeerCache; pc != nil {
		fmt.Fprintf(w, "peer cache: %d of %d peers in %s\n", pc.Count, pc.Max, pc.Path)
	}
	var drops []string
	for k, v := range st.Drops {
		if v > 0 {
			drops = append(drops, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(drops) == 0 {
		drops = []string{"none"}
	}
	sort.Strings(drops)
	fmt.Fprintf(w, "\ndrops: %s\n", strings.Join(drops, " "))
	printFirewall(w, st)
	var refusals []string
	for k, v := range st.Refusals {
		if v > 0 {
			refusals = append(refusals, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(refusals) > 0 {
		sort.Strings(refusals)
		fmt.Fprintf(w, "refusals: %s\n", strings.Join(refusals, " "))
	}
	if d := st.DHT; d != nil {
		fmt.Fprintf(w, "dht: %d contacts in %d buckets, k %d, alpha %d, %d tiers, %d records, %d lookups (%d failed)\n",
			d.TableSize, d.Buckets, d.K, d.Alpha, len(d.Tiers), d.Records, d.Lookups, d.LookupFailures)
	}
}

// peerCachePath is where up keeps its peer cache: beside the key file.
func peerCachePath(keyPath string) string { return keyPath + ".peers" }

func bytesString(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
