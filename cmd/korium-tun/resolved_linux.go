package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"
)

// inHostNetNS reports whether this process shares PID 1's network
// namespace (an `ip netns exec` one does not).
var inHostNetNS = func() bool {
	self, err1 := os.Stat("/proc/self/ns/net")
	pid1, err2 := os.Stat("/proc/1/ns/net")
	return err1 == nil && err2 == nil && os.SameFile(self, pid1)
}

// resolvedRunDir exists while systemd-resolved runs (a variable for tests).
var resolvedRunDir = "/run/systemd/resolve"

// registerResolved makes systemd-resolved send queries for *.korium to the
// node's DNS responder: it sets dns as the TUN link's DNS server and
// ~korium as its routing-only domain (resolvectl dns/domain; the settings
// go away with the link). It reports whether it did; without a running
// systemd-resolved it does nothing (the README says which line to add
// elsewhere).
func registerResolved(ctx context.Context, log *slog.Logger, link string, dns netip.AddrPort) (bool, error) {
	if _, err := os.Stat(resolvedRunDir); err != nil {
		return false, nil
	}
	if !inHostNetNS() {
		// resolved serves the host's namespace: it would take our link's
		// index for one of its own links.
		return false, nil
	}
	bin, err := exec.LookPath("resolvectl")
	if err != nil {
		return false, fmt.Errorf("systemd-resolved runs but resolvectl is missing: *.korium names will not resolve through it")
	}
	server := dns.Addr().String()
	if dns.Port() != 53 {
		server = dns.String() // resolvectl takes [ADDR]:PORT since systemd 246
	}
	for _, args := range [][]string{{"dns", link, server}, {"domain", link, "~korium"}, {"default-route", link, "false"}} {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		out, err := exec.CommandContext(cctx, bin, args...).CombinedOutput()
		cancel()
		if err != nil && args[0] != "default-route" { // default-route is newer (247) and optional
			return false, fmt.Errorf("resolvectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	log.Info("registered with systemd-resolved: *.korium resolves through this node", "link", link, "dns", server)
	return true, nil
}
