package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/overlay"
)

// The inbound firewall of `up`: --allow rules and --inbound-default, their
// config keys (allow, inbound_default), their SIGHUP reload, and the
// firewall part of `status`.

func firewallFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "allow", Usage: "let peers open new inbound flows: 'FROM PROTO[/PORT[-PORT]]' with FROM an identity, " +
			"a spiffe://TD/... pattern (certificates of --ca-cert only) or '*', PROTO tcp, udp, icmp or any (repeatable; e.g. --allow '* tcp/22')"},
		&cli.StringFlag{Name: "inbound-default", Value: "deny", Usage: "new inbound flows no --allow rule admits: deny or allow " +
			"(replies to this node's own flows, ICMPv6 echo requests and errors pass either way)"},
	}
}

func init() {
	flagValidators["allow"] = func(v string) error { _, err := firewall.ParseRule(v); return err }
	flagValidators["inbound-default"] = func(v string) error { _, err := firewall.ParseDefault(v); return err }
	reloadable = append(reloadable, "allow", "inbound_default")
}

// firewallConfig checks --allow and --inbound-default; an error names the
// bad rule and where it came from.
func firewallConfig(c *cli.Context, ucfg *upConfig) (overlay.FirewallConfig, error) {
	return checkFirewall(c.StringSlice("allow"), c.String("inbound-default"), ucfg)
}

func checkFirewall(allow []string, def string, ucfg *upConfig) (overlay.FirewallConfig, error) {
	for _, r := range allow {
		if _, err := firewall.ParseRule(r); err != nil {
			return overlay.FirewallConfig{}, fmt.Errorf("%s: %v", ucfg.optName("allow"), err)
		}
	}
	if len(allow) > firewall.MaxRules {
		return overlay.FirewallConfig{}, fmt.Errorf("%s: %d rules, at most %d", ucfg.optName("allow"), len(allow), firewall.MaxRules)
	}
	if _, err := firewall.ParseDefault(def); err != nil {
		return overlay.FirewallConfig{}, fmt.Errorf("%s %q: want deny or allow", ucfg.optName("inbound-default"), def)
	}
	// up always has a firewall (InboundDefault is never ""), so SIGHUP can
	// change its rules whatever it started with.
	return overlay.FirewallConfig{Allow: slices.Clone(allow), InboundDefault: def}, nil
}

// reloadFirewall applies changed allow / inbound_default keys.
func (s *services) reloadFirewall(changed map[string][]string) {
	allow, okA := changed["allow"]
	def, okD := changed["inbound_default"]
	if !okA && !okD {
		return
	}
	if !okA {
		allow = s.flags["allow"]
	}
	if !okD {
		def = s.flags["inbound-default"]
	}
	d := "deny"
	if len(def) > 0 {
		d = def[0]
	}
	fc, err := checkFirewall(allow, d, nil)
	if err == nil {
		var dropped int
		if dropped, err = s.node.ReloadFirewall(fc); err == nil {
			s.flags["allow"], s.flags["inbound-default"] = slices.Clone(allow), []string{d}
			s.log.Info("firewall reloaded", "rules", len(allow), "inbound_default", d, "flows_no_longer_allowed", dropped)
			return
		}
	}
	s.log.Error("firewall not reloaded: the old rules stay", "err", err)
}

// printFirewall prints the firewall part of status.
func printFirewall(w io.Writer, st statusJSON) {
	fw := st.Firewall
	if fw == nil {
		return
	}
	fmt.Fprintf(w, "\nfirewall: inbound default %s, %d rules, %d flows tracked (max %d, %d evicted)\n", fw.Default, fw.Rules, fw.Flows, fw.MaxFlows, fw.Evicted)
	fmt.Fprintf(w, "  passed:  %s\n  dropped: %s\n", counts(fw.Passed), counts(fw.Dropped))
	if len(fw.RecentDrops) == 0 {
		return
	}
	fmt.Fprintln(w, "  recent drops (newest first; open a port with up --allow 'FROM PROTO/PORT'):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PEER\tPROTO\tPORT\tREASON\tPACKETS\tLAST")
	for _, d := range fw.RecentDrops {
		port := "-"
		if d.Port != 0 {
			port = fmt.Sprint(d.Port)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s ago\n", nameOr(st.Names, d.Peer.String(), 64), d.Proto, port, d.Reason, d.Count,
			time.Since(d.Last).Round(time.Second))
	}
	tw.Flush()
}

// counts formats a counter map as "a=1 b=2" in key order, zeros left out.
func counts(m map[string]uint64) string {
	var out []string
	for k, v := range m {
		if v > 0 {
			out = append(out, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
