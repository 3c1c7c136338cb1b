//go:build linux

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
)

// A bad rule or default, on the command line or in the config file, is one
// error line that names it (and the file and line), before anything is set
// up.
func TestUpFirewallMistakes(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	os.WriteFile(filepath.Join(dir, "none.yaml"), nil, 0o600) // no /etc/korium-tun/config.yaml of the host
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow", "bob tcp/22"}, `--allow: bad firewall rule "bob tcp/22": FROM must be`},
		{[]string{"--allow", "* tcp/22", "--allow", "* tcp/0"}, `bad firewall rule "* tcp/0": port "0" is not a number from 1 to 65535`},
		{[]string{"--allow", "* tcp", "--control", filepath.Join(dir, "none.yaml")}, "not a socket"}, // good rules: a later check fails
		{[]string{"--allow", "spiffe://*/x tcp/1"}, "the trust domain cannot be a wildcard"},
		{[]string{"--inbound-default", "open"}, `--inbound-default "open": want deny or allow`},
	} {
		args := append([]string{"up", "--key", key, "--pow-bits", "4", "--listen", "127.0.0.1:0", "--config", filepath.Join(dir, "none.yaml")}, c.args...)
		_, err := run(t, args...)
		oneLine(t, err, c.want)
		t.Log(err)
		if _, err := os.Stat(key); err == nil {
			t.Fatal("a key was created although a rule was wrong")
		}
	}
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("inbound_default: deny\nallow:\n  - \"* tcp/22\"\n  - \"* tcp/22-21\"\n"), 0o600)
	_, err := run(t, "up", "--config", cfg, "--key", key)
	oneLine(t, err, cfg+":2: allow: ")
	oneLine(t, err, "port range 22-21 is backwards")
	t.Log(err)
}

// status shows the drops by reason and the recent dropped flows with the
// peer's whole identity (what an --allow rule needs) or its name.
func TestStatusShowsFirewallDrops(t *testing.T) {
	var c, d pki.Identity
	c[0], d[0] = 0xcc, 0xdd
	st := statusJSON{Status: overlay.Status{Firewall: &firewall.Stats{
		Passed: map[string]uint64{"flow": 10, "icmp": 2, "rule": 0}, Dropped: map[string]uint64{"no_rule": 3},
		Flows: 4, MaxFlows: 32768, Default: "deny", Rules: 1,
		RecentDrops: []firewall.Drop{
			{Peer: c, Proto: "tcp", Port: 8080, Reason: "no_rule", Count: 3, Last: time.Now()},
			{Peer: d, Proto: "icmp", Reason: "icmp_forged", Count: 1, Last: time.Now()},
		},
	}}, Names: map[string]string{d.String(): "dora"}}
	var b bytes.Buffer
	printStatus(&b, st)
	out := b.String()
	t.Log(out)
	for _, want := range []string{
		"firewall: inbound default deny, 1 rules, 4 flows tracked (max 32768",
		"passed:  flow=10 icmp=2\n", "dropped: no_rule=3\n",
		c.String() + "  tcp    8080  no_rule", "dora", "icmp   -     icmp_forged",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q", want)
		}
	}
}
