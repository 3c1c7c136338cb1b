package smartsock

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/pki"
)

// Config configures a Conn. The zero value of every field but Keypair means
// the default written on it.
type Config struct {
	// Keypair signs this node's hello probes. Required.
	Keypair *pki.Keypair
	// Logger receives rare events; nil discards.
	Logger *slog.Logger
	// MaxPeers caps the path table (default 10,000). Unconfirmed peers are
	// evicted first when it is full.
	MaxPeers int
	// HelloMaxSkew is how far a hello's timestamp may be from our clock
	// (default 2 minutes).
	HelloMaxSkew time.Duration
	// SilentAfter is how long a confirmed path may deliver nothing before a
	// signed hello from another address may replace it (default 3 s): this
	// follows a peer whose NAT mapping changed.
	SilentAfter time.Duration
	// HelloRate bounds hello signature checks per second (default 2,000).
	HelloRate int
	// StatelessResetKey, when set, must be the quic.Transport's key:
	// smartsock then answers short-header packets from unknown sources with
	// a QUIC stateless reset (at most ResetRate per second, each smaller
	// than the packet that caused it), so a peer that still holds a
	// connection to this node's previous run learns at once that it is gone.
	StatelessResetKey *[32]byte
	// ResetRate bounds stateless resets per second (default 100).
	ResetRate int
	// OnDirectPath, if set, is told whenever a peer's traffic moves to a
	// direct address (the relay server follows its endpoints with it). It
	// runs on the path loop and must not call the Conn's methods (they
	// wait for the loop); it holds no lock of smartsock's.
	OnDirectPath func(id pki.Identity, addr netip.AddrPort)
	// ProbeRate bounds path probe requests answered per second (default 1,000).
	ProbeRate int
	// ProbeSourceRate bounds the probe requests checked per second from
	// one source (address, relay session and claimed peer; default 200),
	// before ProbeRate: a flood from one address spends its own budget.
	ProbeSourceRate int
	// HelloSourceRate bounds the hellos checked per second from one
	// address (default 50), before HelloRate.
	HelloSourceRate int
	// PoWBits is the network's proof-of-work difficulty: a hello from an
	// identity below it is dropped before its signature is checked, so
	// nobody fills the path table with free identities. 0 checks nothing.
	PoWBits int
	// OnRefusal, if set, is told of every refusal either way (refusal.go):
	// a hello we refused, a refusal a peer sent us. It runs on the path
	// loop and must not block or call the Conn's methods.
	OnRefusal func(Refusal)
}

func (c *Config) setDefaults() error {
	if c.Keypair == nil {
		return errors.New("smartsock: Config.Keypair is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = 10000
	}
	if c.HelloMaxSkew <= 0 {
		c.HelloMaxSkew = 2 * time.Minute
	}
	if c.SilentAfter <= 0 {
		c.SilentAfter = 3 * time.Second
	}
	if c.HelloRate <= 0 {
		c.HelloRate = 2000
	}
	if c.ProbeRate <= 0 {
		c.ProbeRate = 1000
	}
	if c.ProbeSourceRate <= 0 {
		c.ProbeSourceRate = 200
	}
	if c.HelloSourceRate <= 0 {
		c.HelloSourceRate = 50
	}
	if c.ResetRate <= 0 {
		c.ResetRate = 100
	}
	return nil
}
