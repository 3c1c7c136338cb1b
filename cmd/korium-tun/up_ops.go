package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/dnsserver"
	"github.com/korium/korium-tun/metrics"
	"github.com/korium/korium-tun/names"
	"github.com/korium/korium-tun/overlay"
	ktun "github.com/korium/korium-tun/overlay/tun"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

func powBitsFlag() cli.Flag {
	return &cli.IntFlag{Name: "pow-bits", Value: pki.DefaultPoWBits, Usage: "network proof-of-work difficulty (every node of a network must use the same)"}
}

func controlPathFlag() cli.Flag {
	return &cli.StringFlag{Name: "control", Value: control.DefaultPath, Usage: "control socket of the running node"}
}

// upFlags are the flags of `up`; each is also a config key (keyName).
func upFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "key", Value: defaultKeyPath, Usage: "identity key file (created if missing)"},
		&cli.StringFlag{Name: "listen", Value: "[::]:7400", Usage: "UDP HOST:PORT to listen on"},
		&cli.StringSliceFlag{Name: "bootstrap", Usage: "IDENTITY@HOST:PORT of a peer to keep connected (repeatable)"},
		&cli.StringFlag{Name: "tun", Value: ktun.DefaultName, Usage: "TUN device name"},
		&cli.IntFlag{Name: "mtu", Value: overlay.DefaultMTU, Usage: fmt.Sprintf("tunnel MTU (%d..%d)", overlay.MinMTU, overlay.MaxMTU)},
		powBitsFlag(), controlPathFlag(),
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		&cli.BoolFlag{Name: "relay", Value: true, Usage: "relay for peers behind NAT when this node is publicly reachable (--relay=false turns it off)"},
		&cli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics at http://HOST:PORT/metrics (off by default; HOST must be loopback unless --metrics-public)"},
		&cli.BoolFlag{Name: "metrics-public", Usage: "allow --metrics on a non-loopback address (the figures are served without authentication)"},
		&cli.StringFlag{Name: "dns", Usage: "answer DNS for NAME.korium at HOST:PORT, to this host only (default: the node's SmartAddr port 53; off: no responder)"},
		&cli.StringFlag{Name: "names-file", Value: names.DefaultPath, Usage: "names of peers, NAME IDENTITY per line (names add writes it)"},
		&cli.StringFlag{Name: "trust-domain", Usage: "SPIFFE trust domain: puts spiffe://TD/IDENTITY[/WORKLOAD] in the node's certificate"},
		&cli.StringFlag{Name: "workload", Usage: "SPIFFE workload path after the identity (needs --trust-domain)"},
		&cli.StringFlag{Name: "ca-signer", Usage: "threshold-CA signer state (written by `ca dkg --state`): the node signs CSRs"},
	}, memberFlags()...)
}

// listenMetrics opens --metrics before anything else is set up, so a taken
// port or a public address fails before the TUN exists.
func listenMetrics(c *cli.Context, ucfg *upConfig) (net.Listener, error) {
	addr := c.String("metrics")
	if addr == "" {
		return nil, nil
	}
	ln, err := metrics.Listen(addr, c.Bool("metrics-public"))
	if err != nil {
		return nil, fmt.Errorf("%s %v", ucfg.optName("metrics"), err)
	}
	return ln, nil
}

// services are what `up` runs beside the node: the metrics server, the DNS
// responder, and the SIGHUP handling that reloads the config.
type services struct {
	node    *overlay.Node
	names   *nodeNames
	log     *slog.Logger
	metrics *metrics.Server
	dns     *dnsserver.Server
	flags   map[string][]string // the values in force, by flag (as a config file writes them)
}

// flagValues returns every flag's value as text, lists item by item.
func flagValues(c *cli.Context, flags []cli.Flag) map[string][]string {
	out := make(map[string][]string, len(flags))
	for _, f := range flags {
		name := f.Names()[0]
		if _, ok := f.(*cli.StringSliceFlag); ok {
			out[name] = slices.Clone(c.StringSlice(name))
			continue
		}
		out[name] = []string{fmt.Sprint(c.Value(name))}
	}
	return out
}

// listenDNS opens the DNS responder's socket (nil for --dns off) once the
// TUN holds the node's SmartAddr, before the node starts, so a taken port
// is one error line.
func listenDNS(c *cli.Context, ucfg *upConfig, smartAddr netip.Addr) (*net.UDPConn, error) {
	dns := c.String("dns")
	if dns == "off" {
		return nil, nil
	}
	addr := netip.AddrPortFrom(smartAddr, 53)
	if dns != "" {
		ap, err := netip.ParseAddrPort(dns)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want IP:PORT (or off)", ucfg.optName("dns"), dns)
		}
		addr = ap
	}
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%s %s is in use by another program: choose another with --dns HOST:PORT, or turn the responder off with --dns off", ucfg.optName("dns"), addr)
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil {
			err = op.Err
		}
		return nil, fmt.Errorf("%s: cannot listen on %s: %v", ucfg.optName("dns"), addr, err)
	}
	return pc, nil
}

func startServices(ctx context.Context, c *cli.Context, node *overlay.Node, nn *nodeNames, metricsLn net.Listener, dnsConn *net.UDPConn, log *slog.Logger) (*services, error) {
	s := &services{node: node, names: nn, log: log, flags: flagValues(c, upFlags())}
	if dnsConn != nil {
		s.dns = dnsserver.Serve(dnsConn, dnsserver.Config{
			Lookup: func(name string) (netip.Addr, bool) {
				id, ok := nn.table.Lookup(name)
				return smartaddr.FromIdentity(id), ok
			},
			Reverse: func(a netip.Addr) (string, bool) {
				n := nn.table.NameOfAddr(a)
				return n, n != ""
			},
			Logger: log,
		})
		log.Info("DNS responder for *.korium", "addr", s.dns.Addr().String())
		if c.String("dns") == "" {
			if ok, err := registerResolved(ctx, log, c.String("tun"), s.dns.Addr()); err != nil {
				log.Warn("cannot register *.korium with systemd-resolved", "err", err)
			} else if !ok {
				log.Info("systemd-resolved is not running here: see the README for making NAME.korium resolve", "dns", s.dns.Addr().String())
			}
		}
	}
	if metricsLn != nil {
		b := readBuildInfo()
		src := metrics.Sources{Node: node, Names: nn.table.Len, Version: b.Version, Commit: b.Commit}
		if s.dns != nil {
			src.DNS = func() (dnsserver.Stats, bool) { return s.dns.Stats(), true }
		}
		s.metrics = metrics.Serve(metricsLn, metrics.NewRegistry(src), log)
		log.Info("serving metrics", "url", "http://"+metricsLn.Addr().String()+"/metrics")
	}
	return s, nil
}

// Close stops what startServices started.
func (s *services) Close() error {
	var errs []error
	if s.metrics != nil {
		errs = append(errs, s.metrics.Close())
	}
	if s.dns != nil {
		errs = append(errs, s.dns.Close())
	}
	return errors.Join(errs...)
}

// run waits for ctx to end (SIGINT/SIGTERM), reloading the config file and
// the names file on every SIGHUP.
func (s *services) run(ctx context.Context, ucfg *upConfig, level *slog.LevelVar) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			sdNotify("RELOADING=1")
			s.reload(ucfg, level)
			sdNotify("READY=1")
		}
	}
}

// reload applies a changed config file: bootstrap peers, log level and
// names file; other changed keys are logged as needing a restart. A file
// that no longer parses changes nothing.
func (s *services) reload(ucfg *upConfig, level *slog.LevelVar) {
	changed, restart, err := ucfg.reload(func(flag string) []string { return s.flags[flag] })
	if err != nil {
		s.log.Error("config not reloaded: fix it and send SIGHUP again", "err", err)
		return
	}
	if ucfg.path != "" {
		s.log.Info("config reloaded", "file", ucfg.path, "changed", len(changed))
	}
	for _, key := range restart {
		s.log.Warn("config key changed but applies only at start: restart korium-tun", "key", key)
	}
	if v, ok := changed["log_level"]; ok {
		if l, err := parseLevel(v[0]); err == nil {
			level.Set(l)
			s.flags["log-level"] = v
			s.log.Info("log level changed", "level", v[0])
		}
	}
	if v, ok := changed["bootstrap"]; ok {
		s.setBootstraps(v)
	}
	path := s.flags["names-file"][0]
	if v, ok := changed["names_file"]; ok {
		path = v[0]
	}
	n, err := s.names.reload(path)
	if err != nil {
		s.log.Error("names file not reloaded", "err", err)
		return
	}
	s.flags["names-file"] = []string{path}
	s.log.Info("names reloaded", "file", path, "names", n)
}

// setBootstraps makes want the bootstrap peers: new ones are dialed and
// kept, removed ones are no longer redialed.
func (s *services) setBootstraps(want []string) {
	old := map[pki.Identity]bool{}
	for _, b := range s.flags["bootstrap"] {
		if ct, err := overlay.ParseContact(b); err == nil {
			old[ct.Identity] = true
		}
	}
	keep := map[pki.Identity]bool{}
	for _, b := range want {
		ct, err := overlay.ParseContact(b)
		if err != nil {
			continue // checkFile refused it already
		}
		keep[ct.Identity] = true
		if !old[ct.Identity] {
			s.log.Info("bootstrap peer added", "peer", b)
		}
		s.node.AddPeer(ct)
	}
	for id := range old {
		if !keep[id] {
			s.node.ForgetPeer(id)
			s.log.Info("bootstrap peer removed", "peer", id.String())
		}
	}
	s.flags["bootstrap"] = slices.Clone(want)
}
