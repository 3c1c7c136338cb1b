package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/internal/addrpolicy"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/relay/server"
	"github.com/korium/korium-tun/rpc"
)

// Contact names a peer and where to reach it: its identity, an address,
// and the relays that forward to it when it is behind a NAT (from its
// contact record; sessions through them race the address). Its String is
// the bootstrap form IDENTITY@HOST:PORT.
type Contact = peers.Contact

// ErrBadContact is wrapped by every ParseContact error.
var ErrBadContact = errors.New("malformed bootstrap string")

// ParseContact parses IDENTITY@HOST:PORT, where IDENTITY is 64 lowercase hex
// characters and HOST an IPv4 address or a bracketed IPv6 address.
func ParseContact(s string) (Contact, error) {
	var c Contact
	if len(s) > 200 {
		return c, fmt.Errorf("%w: %d characters is too long", ErrBadContact, len(s))
	}
	idText, addrText, ok := strings.Cut(s, "@")
	if !ok {
		return c, fmt.Errorf("%w %q: want IDENTITY@HOST:PORT", ErrBadContact, s)
	}
	id, err := pki.ParseIdentity(idText)
	if err != nil {
		return c, fmt.Errorf("%w %q: %v", ErrBadContact, s, err)
	}
	ap, err := netip.ParseAddrPort(addrText)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return c, fmt.Errorf("%w %q: %q is not IP:PORT (use [v6addr]:port for IPv6, port 1-65535)", ErrBadContact, s, addrText)
	}
	if ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
		return c, fmt.Errorf("%w %q: %s cannot be dialed", ErrBadContact, s, ap.Addr())
	}
	c.Identity = id
	c.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return c, nil
}

// Config configures a Node. Its zero value is usable: every field documents
// its default.
type Config struct {
	// Keypair is the node's identity. Default: a fresh key made at start
	// (ephemeral: a program that wants a stable address loads one).
	Keypair *pki.Keypair
	// PoWBits is the network's proof-of-work difficulty: peers below it are
	// refused at the handshake, and our own key must meet it. 0 means
	// pki.DefaultPoWBits (24); a negative value means none (tests only).
	PoWBits int
	// Conn is the UDP socket the node runs on; the node owns it from New on.
	// Default: a socket bound to Listen.
	Conn *net.UDPConn
	// Listen is where to bind when Conn is nil. Default "[::]:0" (a random
	// port on every address).
	Listen string
	// Device carries IP packets to and from local programs; the node owns
	// it. Default: an in-process gVisor netstack (no root needed), whose
	// Dial and Listen the Node exposes.
	Device tun.Device
	// Net is the Dial and Listen face of Device when it is an in-process
	// stack (netstack.Create returns both): the node's DialContext, Listen
	// and ListenPacket use it. Default: Device itself when it has those
	// methods (a *netstack.Stack); none on a kernel TUN.
	Net Net
	// MTU is the largest IPv6 packet the tunnel carries, 1280..MaxMTU.
	// Default DefaultMTU (1392): a 1500-byte underlay with room for a relay
	// header.
	MTU int
	// Bootstrap peers are dialed at start and redialed whenever their
	// connection drops.
	Bootstrap []Contact
	// Logger receives connection events; nil discards. No line per packet.
	Logger *slog.Logger
	// KeepAlive is the QUIC keep-alive period (default 15 s): a
	// connection that heard nothing this long sends a PING. It holds the
	// NAT mapping of the path in use (home NATs keep idle UDP mappings 30 s
	// or more, Linux conntrack 30 s unreplied and 120 s replied; WireGuard's
	// persistent keep-alive is 25 s) and proves the path to smartsock, which
	// then does not probe it (smartsock.QUICProof, 20 s). quic-go sends
	// keep-alives at most every half of the idle timeout both ends agreed
	// on, so a peer with a shorter idle timeout gets them sooner.
	KeepAlive time.Duration
	// IdleTimeout closes a connection that hears nothing (default 30 s:
	// two keep-alive periods, so one PING and its retransmissions may be
	// lost). It is how long a peer that vanished without a word (no close,
	// no stateless reset) stays connected; traffic to it finds its path
	// dead much sooner (smartsock's probes of a path gone quiet, ~2 s).
	IdleTimeout time.Duration
	// HandshakeTimeout bounds a dial (default 5 s).
	HandshakeTimeout time.Duration
	// PendingTimeout is how long a packet to a not-yet-connected overlay
	// address is held (default 3 s).
	PendingTimeout time.Duration
	// MaxPending caps destinations with a held packet (default 1,024).
	MaxPending int
	// MaxPeers caps open connections (default 1,000, the reference's
	// connection cache). A new connection beyond it evicts the least
	// recently used peer that is not a bootstrap contact.
	MaxPeers int
	// SendQueue is each peer's send queue in packets (default 1,024): the
	// device is read on while a peer's connection is congested or dead,
	// and a full queue loses its oldest packet (counted as
	// tx_queue_dropped).
	SendQueue int
	// Advertise are the addresses others should use to reach this node
	// (published in its DHT record and printed as bootstrap strings).
	// Default: the listen address, or every non-loopback address of the
	// host when listening on all of them. Each must be one others may be
	// sent to (internal/addrpolicy): loopback only when the node listens on
	// loopback.
	Advertise []netip.AddrPort
	// DisableDHT turns the DHT off: only bootstrap contacts and peers that
	// connect to us are reachable.
	DisableDHT bool
	// DHT tunes the DHT; its PoWBits, Logger and AllowLoopback are the
	// node's.
	DHT dht.Config
	// DisablePubSub turns the GossipSub router off.
	DisablePubSub bool
	// PubSub tunes the GossipSub router (zero value: the reference's defaults).
	PubSub gossipsub.Config
	// Resolver, when set, finds who owns an overlay address the node has
	// no connection to. Default: the DHT. A packet to such an address
	// starts one resolution (not one per packet); the held packet goes out
	// when the connection is up, and a failure answers it with ICMPv6
	// Destination Unreachable. Nil: only connected peers are reachable.
	Resolver Resolver
	// ResolveTimeout bounds one resolution and its dials (default 10 s).
	ResolveTimeout time.Duration
	// ResolveFailTTL is how long a failed resolution is remembered, during
	// which packets to that address are answered at once with ICMPv6
	// Destination Unreachable (default 1 s).
	ResolveFailTTL time.Duration
	// RequestTimeout bounds one incoming request's handler: the
	// SetRequestHandler function, a reader of IncomingRequests, or a
	// RegisterProtocol handler (default 10 s).
	RequestTimeout time.Duration
	// IdleEvict closes a connection that carried no packet and no request
	// for this long (default 10 minutes; negative: never). Bootstrap peers,
	// relays and pubsub topic peers are kept.
	IdleEvict time.Duration
	// NoRelay stops this node from relaying for others. By default every
	// node relays, and peers ask only nodes that found themselves publicly
	// reachable.
	NoRelay bool
	// RelayServer tunes the relay's limits (zero value: the reference's
	// 10,000 sessions, 50 per IP, idle expiry and per-session caps).
	RelayServer server.Config
	// PeerCache is the file that keeps the signed records of up to 100
	// peers this node reached (the reference's passive view), so that a
	// restart whose bootstrap peers are all gone rejoins through them.
	// It is read at start (a bad file costs a warning), written when it
	// changed (at most every 10 s) and at Close. Empty: no cache. The
	// CLI puts it beside the key file.
	PeerCache string
	// testNoDialBack makes configure_nat ignore dial-backs, so a test on
	// one host can play a node behind NAT.
	testNoDialBack bool
	// RequestQueue caps requests waiting in IncomingRequests (default 64);
	// further ones are refused and counted.
	RequestQueue int
	// RPC tunes the request server: its budgets for request bytes in
	// flight (rpc.DefaultPeerBudget 4 MiB per peer, rpc.DefaultNodeBudget
	// 32 MiB in all), StreamTimeout, and the cap of threshold-CA messages
	// (MaxSize[rpc.ProtoCA], default DefaultCAMessageSize). The caps of the
	// other protocols are their own maxima and its HandlerTimeout is
	// RequestTimeout.
	RPC rpc.Config
	// TrustDomain, when set, puts the node's SPIFFE ID
	// spiffe://TrustDomain/IDENTITY[/Workload] in its certificate, and is
	// the default trust domain of RequestCACertificate.
	TrustDomain string
	Workload    string
	// CASigner makes the node a threshold-CA signer with this state (from
	// a DKG, see tca.LoadState): it answers CSRs on the csr topic.
	CASigner *tca.SignerState
	// CA tunes the threshold CA (its Keypair, Network and Signer are the
	// node's).
	CA tca.Config
	// Members makes the node part of a members-only network: its own
	// CA-signed certificate, renewed through the mesh, and which peers it
	// accepts (see members.go). The zero value: no membership.
	Members MembersConfig
	// Firewall filters the new flows peers open toward the device (see
	// firewall.go). The zero value: no firewall.
	Firewall FirewallConfig
}

// Resolver returns contacts that may own addr. The node dials them with the
// identity pinned and checks that the identity owns addr, so a resolver's
// answer is never trusted on its own.
type Resolver func(ctx context.Context, addr netip.Addr) ([]Contact, error)

// The QUIC keep-alive period and idle timeout of Config's zero value (see
// Config.KeepAlive, Config.IdleTimeout). At 1,000 idle peers, 5 s / 15 s
// were 0.4 packets per peer a second, most of the node's idle CPU
// (scripts/scale.sh, SCALE.md).
const (
	DefaultKeepAlive   = 15 * time.Second
	DefaultIdleTimeout = 30 * time.Second
)

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if out.PoWBits == 0 {
		out.PoWBits = pki.DefaultPoWBits
	} else if out.PoWBits < 0 {
		out.PoWBits = 0
	}
	if out.PoWBits > pki.MaxPoWBits {
		return out, fmt.Errorf("overlay: Config.PoWBits %d above %d", out.PoWBits, pki.MaxPoWBits)
	}
	if out.Listen == "" {
		out.Listen = "[::]:0"
	}
	if out.MTU == 0 {
		out.MTU = DefaultMTU
	}
	if out.MTU < MinMTU || out.MTU > MaxMTU {
		return out, fmt.Errorf("overlay: Config.MTU %d outside %d..%d", out.MTU, MinMTU, MaxMTU)
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&out.KeepAlive, DefaultKeepAlive)
	def(&out.IdleTimeout, DefaultIdleTimeout)
	if out.IdleEvict == 0 {
		out.IdleEvict = peers.DefaultIdleEvict
	}
	def(&out.HandshakeTimeout, 5*time.Second)
	def(&out.PendingTimeout, 3*time.Second)
	def(&out.ResolveTimeout, 10*time.Second)
	def(&out.ResolveFailTTL, time.Second)
	if out.MaxPending <= 0 {
		out.MaxPending = 1024
	}
	if out.MaxPeers <= 0 {
		out.MaxPeers = peers.DefaultMaxPeers
	}
	def(&out.RequestTimeout, 10*time.Second)
	if out.RequestQueue <= 0 {
		out.RequestQueue = 64
	}
	if err := out.checkCAConfig(); err != nil {
		return out, err
	}
	if _, _, err := out.Firewall.build(); err != nil {
		return out, err
	}
	if out.KeepAlive >= out.IdleTimeout {
		return out, fmt.Errorf("overlay: Config.KeepAlive %v must be below IdleTimeout %v", out.KeepAlive, out.IdleTimeout)
	}
	loop := listensOnLoopback(&out)
	for _, a := range out.Advertise {
		if err := addrpolicy.Check(a, loop); err != nil {
			return out, fmt.Errorf("overlay: Config.Advertise: %w: advertise an address other nodes can reach (loopback only when listening on loopback)", err)
		}
	}
	return out, nil
}

// listensOnLoopback reports whether the node's socket (Conn, else Listen)
// is bound to a loopback address.
func listensOnLoopback(c *Config) bool {
	if c.Conn != nil {
		ua, ok := c.Conn.LocalAddr().(*net.UDPAddr)
		return ok && ua.AddrPort().Addr().Unmap().IsLoopback()
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
