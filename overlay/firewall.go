package overlay

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/firewall"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
)

// FirewallConfig is the node's inbound firewall (package firewall, in the
// datapath, on either device): which new flows peers may open toward the
// device. Replies to flows the device started always pass, and so do
// ICMPv6 echo requests and the ICMPv6 errors (Packet Too Big among them)
// about packets we sent to their sender.
//
// The zero value means no firewall, as a library has no host's listening
// ports to guard: an in-process netstack reaches only the listeners the
// program opened. A program that puts the node on a kernel TUN (as
// `korium-tun up` does, with InboundDefault "deny") exposes every port of
// the host and should set one.
type FirewallConfig struct {
	// Allow are the rules, each "FROM PROTO[/PORT[-PORT]]" as
	// firewall.ParseRule reads them: FROM is "*", a 64-hex identity or a
	// SPIFFE ID pattern (spiffe://TD/*/web), PROTO tcp, udp, icmp or any.
	// A SPIFFE pattern matches only peers whose certificate chains to the
	// node's CA (Members.CA) and is still valid: a self-signed certificate
	// may name any SPIFFE ID.
	Allow []string
	// InboundDefault is what happens to a new inbound flow no rule admits:
	// "deny" or "allow". "" means "deny" when Allow has rules, and no
	// firewall at all when it has none.
	InboundDefault string
	// MaxFlows caps the flow table (default 32,768, allocated at start);
	// MaxInboundFlowsPerPeer the flows one peer may have tracked (default
	// 1,024). See firewall.Config.
	MaxFlows, MaxInboundFlowsPerPeer int
}

// ErrNoFirewall is returned by ReloadFirewall on a node started without one.
var ErrNoFirewall = errors.New("overlay: the node started without a firewall (Config.Firewall has no rules and no InboundDefault): restart it with one")

// build returns the firewall configuration c means, and whether there is
// a firewall at all. Its errors name the bad rule.
func (c FirewallConfig) build() (firewall.Config, bool, error) {
	var fc firewall.Config
	rules, err := firewall.ParseRules(c.Allow)
	if err != nil {
		return fc, false, fmt.Errorf("overlay: Config.Firewall.Allow: %w", err)
	}
	fc.Rules, fc.MaxFlows, fc.MaxInboundFlowsPerPeer = rules, c.MaxFlows, c.MaxInboundFlowsPerPeer
	switch c.InboundDefault {
	case "":
		return fc, len(rules) > 0, nil
	default:
		if fc.Default, err = firewall.ParseDefault(c.InboundDefault); err != nil {
			return fc, false, fmt.Errorf("overlay: Config.Firewall.InboundDefault: %w", err)
		}
	}
	return fc, true, nil
}

// initFirewall makes the firewall Config.Firewall asks for (n.fw stays nil
// without one).
func (n *Node) initFirewall() error {
	fc, on, err := n.cfg.Firewall.build()
	if err != nil || !on {
		return err
	}
	n.fw, err = firewall.New(fc)
	return err
}

// firewallSPIFFE is the datapath's FirewallSPIFFE: the SPIFFE ID of p's
// newest certificate that chains to our CA (vouchSPIFFE checks the
// handshake's, at peerUp, before the connection drops it; onLeafUpdate
// the renewals the peer pushes, which may name another workload), with
// the expiry of p's membership. The firewall reads both live: a rename or
// an expiry takes effect at the peer's next packet.
func (n *Node) firewallSPIFFE(p *peers.Peer) (*atomic.Pointer[string], *atomic.Int64) {
	pm := memberOf(p)
	if n.mem == nil || pm == nil {
		return nil, nil
	}
	return &pm.vouched, &pm.notAfter
}

// vouchSPIFFE verifies p's handshake certificate against our CA and keeps
// its SPIFFE ID for the firewall (firewallSPIFFE). peerUp calls it before
// the connection drops the peer's certificates.
func (n *Node) vouchSPIFFE(p *peers.Peer) {
	m, pm := n.mem, memberOf(p)
	if m == nil || pm == nil || p.SPIFFEID == "" {
		return
	}
	certs := p.Conn.ConnectionState().TLS.PeerCertificates
	if len(certs) != 1 {
		return
	}
	info, err := pki.VerifyMember(certs[0], m.cfg.CA.Cert, m.cfg.CA.TrustDomain, time.Now())
	if err != nil || info.Identity != p.ID || info.SPIFFEID.String() != p.SPIFFEID {
		return
	}
	sid := p.SPIFFEID
	pm.vouched.Store(&sid)
}

// ReloadFirewall replaces the firewall's rules and default. Flows this node
// started keep passing; flows peers started survive when the new rules
// still admit them, and the others are dropped now (their number is
// returned). The flow-table bounds stay as the node started.
func (n *Node) ReloadFirewall(c FirewallConfig) (dropped int, err error) {
	if n.fw == nil {
		return 0, ErrNoFirewall
	}
	fc, _, err := c.build()
	if err != nil {
		return 0, err
	}
	if c.InboundDefault == "" {
		fc.Default = firewall.Deny
	}
	return n.fw.Reload(fc, time.Now().UnixNano())
}

// FirewallStats returns the firewall's counters, flow table and last
// dropped flows; false on a node without a firewall.
func (n *Node) FirewallStats() (firewall.Stats, bool) {
	if n.fw == nil {
		return firewall.Stats{}, false
	}
	return n.fw.Stats(), true
}

// FirewallRules returns the rules in force and the default; false on a
// node without a firewall.
func (n *Node) FirewallRules() ([]firewall.Rule, firewall.Default, bool) {
	if n.fw == nil {
		return nil, firewall.Deny, false
	}
	r, d := n.fw.Rules()
	return r, d, true
}
