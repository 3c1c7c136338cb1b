//go:build linux

// Package tun creates the kernel TUN device of a node: a
// golang.zx2c4.com/wireguard/tun device (GSO/GRO offload on) that holds the
// node's SmartAddr with the whole fd00:c0f1::/32 routed to it. Closing the
// device removes it. It imports smartaddr only. The kernel device is
// Linux-only; elsewhere Create reports that and the netstack device remains.
package tun

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/korium/korium-tun/smartaddr"
)

// Create makes the device, gives it Addr/32 (so the kernel routes the whole
// overlay prefix to it), sets the MTU and brings it up. The kernel's own
// router solicitations and similar link-local chatter are switched off where
// the kernel allows; what remains is dropped by the packet loop.
func Create(cfg Config) (wgtun.Device, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if !smartaddr.IsOverlay(cfg.Addr) {
		return nil, fmt.Errorf("tun: %s is not an overlay address", cfg.Addr)
	}
	if len(cfg.Name) >= unix.IFNAMSIZ || strings.ContainsAny(cfg.Name, "/ \t") {
		return nil, fmt.Errorf("tun: device name %q is invalid (at most 15 characters, no slashes or spaces)", cfg.Name)
	}
	if _, err := net.InterfaceByName(cfg.Name); err == nil {
		return nil, fmt.Errorf("network device %s already exists: is another korium-tun running? pick another name with --tun", cfg.Name)
	}
	dev, err := wgtun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("creating TUN device %s needs root (CAP_NET_ADMIN): run korium-tun up with sudo", cfg.Name)
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("creating TUN device %s: /dev/net/tun is missing: load the tun module (modprobe tun)", cfg.Name)
		}
		return nil, fmt.Errorf("creating TUN device %s: %v", cfg.Name, err)
	}
	name, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, err
	}
	if err := configure(name, cfg); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configuring %s: %v", name, err)
	}
	return dev, nil
}

func configure(name string, cfg Config) error {
	// Best effort: no router solicitations, no RA processing on the tunnel.
	for k, v := range map[string]string{"router_solicitations": "0", "accept_ra": "0", "dad_transmits": "0"} {
		os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", name, k), []byte(v), 0)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
		return fmt.Errorf("set MTU %d: %v", cfg.MTU, err)
	}
	addr := &netlink.Addr{
		IPNet: &net.IPNet{IP: cfg.Addr.AsSlice(), Mask: net.CIDRMask(smartaddr.Prefix.Bits(), 128)},
		Flags: unix.IFA_F_NODAD, // usable at once: the address is ours by construction
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add address %s: %v", addr.IPNet, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("link up: %v", err)
	}
	return nil
}
