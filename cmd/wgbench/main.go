//go:build linux

// Command wgbench brings up one wireguard-go device in the current network
// namespace. It exists only as the baseline for scripts/bench-throughput.sh:
// run one in each of two namespaces joined by a veth and they form a
// wireguard-go tunnel to compare the korium-tun overlay against.
//
// Usage:
//
//	wgbench genkey                 print "PRIVATE PUBLIC" (base64, like wg(8))
//	wgbench pubkey < PRIVATE       print the public key of a base64 private key
//	wgbench [flags]                run the device until SIGINT/SIGTERM
//
// The kernel TUN is created with tun.CreateTUN, so GSO/GRO offload is on
// whenever the kernel supports it (-offload=false turns it off for
// comparison). The TUN is removed when the program exits.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type config struct {
	privateKey   string // base64
	keyFile      string
	peerKey      string // base64
	listenPort   int
	peerEndpoint string
	tunName      string
	mtu          int
	addrs        listFlag // CIDR, assigned to the TUN
	routes       listFlag // CIDR, routed into the TUN
	allowedIPs   listFlag // CIDR, peer's allowed IPs (default: routes, else address prefixes)
	keepalive    int
	offload      bool
	verbose      bool
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "genkey":
			exitOn(genkey(os.Stdout))
			return
		case "pubkey":
			exitOn(pubkey(os.Stdin, os.Stdout))
			return
		}
	}

	var c config
	fs := flag.NewFlagSet("wgbench", flag.ExitOnError)
	fs.StringVar(&c.privateKey, "private-key", "", "base64 private key (or use -private-key-file)")
	fs.StringVar(&c.keyFile, "private-key-file", "", "file holding a base64 private key")
	fs.StringVar(&c.peerKey, "peer-public-key", "", "base64 public key of the peer (required)")
	fs.IntVar(&c.listenPort, "listen-port", 51820, "UDP listen port")
	fs.StringVar(&c.peerEndpoint, "peer-endpoint", "", "peer UDP endpoint HOST:PORT ([v6]:port); empty = wait for the peer to connect")
	fs.StringVar(&c.tunName, "tun", "wgbench0", "TUN interface name")
	fs.IntVar(&c.mtu, "mtu", device.DefaultMTU, "TUN MTU")
	fs.Var(&c.addrs, "address", "tunnel address in CIDR form, e.g. 2001:db8:2::1/64 (repeatable)")
	fs.Var(&c.routes, "route", "extra route into the TUN in CIDR form (repeatable)")
	fs.Var(&c.allowedIPs, "allowed-ip", "peer allowed IP in CIDR form (repeatable; default: -route values, else the -address prefixes)")
	fs.IntVar(&c.keepalive, "keepalive", 0, "persistent keepalive interval in seconds (0 = off)")
	fs.BoolVar(&c.offload, "offload", true, "enable TUN GSO/GRO offload (virtio-net header)")
	fs.BoolVar(&c.verbose, "v", false, "verbose wireguard-go logging")
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() != 0 {
		exitOn(fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	exitOn(run(&c))
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgbench:", err)
		os.Exit(1)
	}
}

func genkey(w io.Writer) error {
	var priv [32]byte
	if _, err := rand.Read(priv[:]); err != nil {
		return err
	}
	// Clamp as wg(8) does; wireguard-go clamps again anyway.
	priv[0] &= 248
	priv[31] = (priv[31] & 127) | 64
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s %s\n", base64.StdEncoding.EncodeToString(priv[:]), base64.StdEncoding.EncodeToString(pub))
	return err
}

func pubkey(r io.Reader, w io.Writer) error {
	b, err := io.ReadAll(io.LimitReader(r, 1024))
	if err != nil {
		return err
	}
	priv, err := decodeKey(string(b))
	if err != nil {
		return err
	}
	pub, err := curve25519.X25519(priv, curve25519.Basepoint)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, base64.StdEncoding.EncodeToString(pub))
	return err
}

// decodeKey turns a base64 key (wg(8) format) into its 32 raw bytes.
func decodeKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("key is not base64: %w", err)
	}
	if len(k) != 32 {
		return nil, fmt.Errorf("key has %d bytes, want 32", len(k))
	}
	return k, nil
}

// uapiConfig builds the IpcSet text (hex keys, one key=value per line).
func uapiConfig(c *config, priv, peer []byte, allowed []netip.Prefix) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(priv))
	fmt.Fprintf(&b, "listen_port=%d\n", c.listenPort)
	fmt.Fprintf(&b, "replace_peers=true\n")
	fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(peer))
	if c.peerEndpoint != "" {
		ap, err := netip.ParseAddrPort(c.peerEndpoint)
		if err != nil {
			return "", fmt.Errorf("peer endpoint: %w", err)
		}
		fmt.Fprintf(&b, "endpoint=%s\n", ap)
	}
	if c.keepalive > 0 {
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", c.keepalive)
	}
	b.WriteString("replace_allowed_ips=true\n")
	for _, p := range allowed {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p)
	}
	return b.String(), nil
}

func run(c *config) error {
	if c.privateKey == "" && c.keyFile != "" {
		b, err := os.ReadFile(c.keyFile)
		if err != nil {
			return err
		}
		c.privateKey = string(b)
	}
	if c.privateKey == "" || c.peerKey == "" {
		return errors.New("-private-key (or -private-key-file) and -peer-public-key are required")
	}
	priv, err := decodeKey(c.privateKey)
	if err != nil {
		return fmt.Errorf("private key: %w", err)
	}
	peer, err := decodeKey(c.peerKey)
	if err != nil {
		return fmt.Errorf("peer public key: %w", err)
	}
	if len(c.addrs) == 0 {
		return errors.New("at least one -address is required")
	}
	var addrs, routes, allowed []netip.Prefix
	for _, s := range c.addrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("address: %w", err)
		}
		addrs = append(addrs, p)
	}
	for _, s := range c.routes {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("route: %w", err)
		}
		routes = append(routes, p.Masked())
	}
	for _, s := range c.allowedIPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("allowed-ip: %w", err)
		}
		allowed = append(allowed, p.Masked())
	}
	if len(allowed) == 0 {
		allowed = routes
	}
	if len(allowed) == 0 {
		for _, p := range addrs {
			allowed = append(allowed, p.Masked())
		}
	}
	uapi, err := uapiConfig(c, priv, peer, allowed)
	if err != nil {
		return err
	}

	tdev, err := createTUN(c.tunName, c.mtu, c.offload)
	if err != nil {
		return fmt.Errorf("create TUN %q: %w", c.tunName, err)
	}
	name, err := tdev.Name()
	if err != nil {
		tdev.Close()
		return err
	}

	level := device.LogLevelError
	if c.verbose {
		level = device.LogLevelVerbose
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(level, "("+name+") "))
	// dev.Close closes the TUN, which removes the (non-persistent) interface.
	defer dev.Close()

	if err := dev.IpcSet(uapi); err != nil {
		return fmt.Errorf("IpcSet: %w", err)
	}
	if err := dev.Up(); err != nil {
		return fmt.Errorf("device up: %w", err)
	}
	if err := configureLink(name, addrs, routes); err != nil {
		return err
	}
	fmt.Printf("wgbench: %s up, mtu %d, batch %d, listen :%d, peer %s, allowed %v\n",
		name, c.mtu, tdev.BatchSize(), c.listenPort, c.peerEndpoint, allowed)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		fmt.Printf("wgbench: %s: shutting down\n", s)
	case <-dev.Wait():
		return errors.New("device closed unexpectedly")
	}
	return nil
}

// createTUN opens the kernel TUN. With offload it is exactly tun.CreateTUN
// (virtio-net header, TSO/USO, batched reads). Without it the TUN is opened
// without IFF_VNET_HDR, which makes wireguard-go fall back to one packet per
// read and write.
func createTUN(name string, mtu int, offload bool) (tun.Device, error) {
	if offload {
		return tun.CreateTUN(name, mtu)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}

// configureLink assigns the tunnel addresses, sets the link up and adds routes.
func configureLink(name string, addrs, routes []netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	for _, p := range addrs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD // usable at once, no duplicate address detection wait
		}
		if err := netlink.AddrAdd(link, a); err != nil {
			return fmt.Errorf("address %s on %s: %w", p, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("link %s up: %w", name, err)
	}
	for _, p := range routes {
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s: %w", p, name, err)
		}
	}
	return nil
}
