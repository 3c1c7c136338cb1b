//go:build linux

package tun

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs f in a fresh network namespace on a locked thread, so the
// test's device never touches the host's namespace.
func inNewNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) for a TUN device")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread stays locked and is discarded when this goroutine
		// exits, so the namespace switch never leaks to other goroutines.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		f()
	}()
	<-done
}

func TestCreateConfiguresAndRemoves(t *testing.T) {
	addr := netip.MustParseAddr("fd00:c0f1:1:2:3:4:5:6")
	inNewNetns(t, func() {
		dev, err := Create(Config{Name: "ktest0", MTU: 1392, Addr: addr})
		if err != nil {
			t.Error(err)
			return
		}
		link, err := netlink.LinkByName("ktest0")
		if err != nil {
			t.Error(err)
			dev.Close()
			return
		}
		if link.Attrs().MTU != 1392 || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("mtu %d flags %v", link.Attrs().MTU, link.Attrs().Flags)
		}
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_V6)
		found := false
		for _, a := range addrs {
			if a.IPNet.String() == "fd00:c0f1:1:2:3:4:5:6/32" {
				found = true
			}
		}
		if !found {
			t.Errorf("address missing: %v", addrs)
		}
		out, _ := exec.Command("ip", "-6", "route", "get", "fd00:c0f1:aaaa::1").CombinedOutput()
		if !strings.Contains(string(out), "dev ktest0") {
			t.Errorf("overlay prefix not routed to the device: %s", out)
		}
		// A second device with the same name is refused with a clear error.
		if _, err := Create(Config{Name: "ktest0", MTU: 1392, Addr: addr}); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("duplicate name: %v", err)
		}
		dev.Close()
		if _, err := netlink.LinkByName("ktest0"); err == nil {
			t.Error("device still present after Close")
		}
	})
}

func TestRejectsBadConfig(t *testing.T) {
	if _, err := Create(Config{Name: "x", MTU: 1392, Addr: netip.MustParseAddr("2001:db8::1")}); err == nil {
		t.Error("non-overlay address accepted")
	}
	if _, err := Create(Config{Name: "much-too-long-name0", MTU: 1392, Addr: netip.MustParseAddr("fd00:c0f1::1")}); err == nil {
		t.Error("long name accepted")
	}
}
