package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/rpc"
)

// The threshold CA (pki/tca) runs on every node with pubsub: its gossip
// topics (ca/signers, ca/dkg/round1, csr) through the node's GossipSub,
// its point-to-point messages as rpc.ProtoCA requests on the authenticated
// peer connections. A node is a signer when Config.CASigner is set (or
// after SetCASigner); any node can run a DKG or request a certificate.

// ErrNoCA is returned by the CA API when pubsub is disabled.
var ErrNoCA = errors.New("overlay: the threshold CA needs pubsub (Config.DisablePubSub is set)")

// caNet is tca.Network over the node.
type caNet struct{ n *Node }

func (c caNet) Publish(topic string, data []byte) error { return c.n.Publish(topic, data) }

func (c caNet) Subscribe(topic string, h func(pki.Identity, []byte)) (func(), error) {
	sub, err := c.n.Subscribe(topic)
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { // ends when the subscription's channel closes
		defer close(done)
		for m := range sub.Messages() {
			h(m.From, m.Data)
		}
	}()
	return func() {
		c.n.Unsubscribe(topic)
		<-done
	}, nil
}

func (c caNet) Call(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	if to == c.n.id {
		return c.n.ca.HandleRPC(ctx, to, req)
	}
	return c.n.Call(ctx, to, rpc.ProtoCA, req)
}

func (c caNet) Connect(ctx context.Context, to pki.Identity) error {
	if to == c.n.id {
		return nil
	}
	return c.n.ConnectIdentity(ctx, to)
}

// initCA starts the CA service (after the gossip router) and membership.
func (n *Node) initCA() error {
	if n.gossip == nil {
		if n.cfg.CASigner != nil {
			return ErrNoCA
		}
		return n.initMembers()
	}
	cc := n.cfg.CA
	cc.Keypair, cc.Network, cc.Signer = n.kp, caNet{n}, n.cfg.CASigner
	if cc.PoWBits == 0 {
		cc.PoWBits = n.cfg.PoWBits
	}
	if cc.Logger == nil {
		cc.Logger = n.cfg.Logger
	}
	svc, err := tca.New(cc)
	if err != nil {
		return fmt.Errorf("overlay: CA signer: %w", err)
	}
	n.ca = svc
	n.rpc.Handle(rpc.ProtoCA, func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		n.touch(from)
		if tca.MessageType(req) == tca.MsgLeafUpdate {
			return n.onLeafUpdate(from, req)
		}
		return svc.HandleRPC(ctx, from, req)
	})
	return n.initMembers()
}

func (n *Node) closeCA() {
	if n.ca != nil {
		n.ca.Close()
	}
}

// tlsRefused counts handshakes refused for a SPIFFE ID naming another key.
func (n *Node) tlsRefused(err error) {
	if errors.Is(err, pki.ErrSPIFFEMismatch) {
		n.stats.SPIFFERefused.Add(1)
	}
}

// SPIFFEID returns the node's SPIFFE ID, or "" without a trust domain.
func (n *Node) SPIFFEID() string {
	sc := pki.SPIFFEConfig{TrustDomain: n.cfg.TrustDomain, Workload: n.cfg.Workload}
	if !sc.Enabled() {
		return ""
	}
	id, err := sc.ID(n.id)
	if err != nil {
		return ""
	}
	return id.String()
}

// RunCADKG runs this node's part in a threshold-CA key generation with the
// other signers named in cfg (each runs it too). The result is not saved
// and the node does not sign with it until SetCASigner.
func (n *Node) RunCADKG(ctx context.Context, cfg tca.DKGConfig) (*tca.DKGResult, error) {
	if n.ca == nil {
		return nil, ErrNoCA
	}
	return n.ca.RunDKG(ctx, cfg)
}

// SetCASigner makes the node a CA signer with st (as Config.CASigner does
// at start), keeping the identities it approves in approvalsFile ("": in
// memory only).
func (n *Node) SetCASigner(st *tca.SignerState, approvalsFile string) error {
	if n.ca == nil {
		return ErrNoCA
	}
	return n.ca.SetSigner(st, approvalsFile)
}

// CASignerState returns the state the node signs with, or nil.
func (n *Node) CASignerState() *tca.SignerState {
	if n.ca == nil {
		return nil
	}
	return n.ca.SignerState()
}

// RequestCACertificate asks the signers of cfg.TrustDomain for an
// X509-SVID of this node's identity (the reference's
// request_ca_certificate_from_mesh).
func (n *Node) RequestCACertificate(ctx context.Context, cfg tca.RequestConfig) (*tca.Certificate, error) {
	if n.ca == nil {
		return nil, ErrNoCA
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = n.cfg.TrustDomain
	}
	if cfg.Workload == "" && cfg.TrustDomain == n.cfg.TrustDomain {
		cfg.Workload = n.cfg.Workload
	}
	if m := n.mem; m != nil && cfg.CA == nil && cfg.TrustDomain == m.cfg.CA.TrustDomain.Name() && (cfg.CAKey == nil || bytes.Equal(cfg.CAKey, m.cfg.CA.GroupKey)) {
		cfg.CA = m.cfg.CA // ask its signers directly: a node not yet a member reaches them only so
	}
	return n.ca.RequestCertificate(ctx, cfg)
}

// CAStats returns the CA service's counters (nil without pubsub).
func (n *Node) CAStats() *tca.Stats {
	if n.ca == nil {
		return nil
	}
	st := n.ca.Stats()
	return &st
}

// checkCAConfig validates the SPIFFE, CA and Members fields of a Config.
func (c *Config) checkCAConfig() error {
	if err := c.checkMembersConfig(); err != nil {
		return err
	}
	if c.TrustDomain == "" {
		if c.Workload != "" {
			return errors.New("overlay: Config.Workload needs Config.TrustDomain")
		}
	} else if err := (pki.SPIFFEConfig{TrustDomain: c.TrustDomain, Workload: c.Workload}).Check(); err != nil {
		return fmt.Errorf("overlay: Config.TrustDomain/Workload: %w", err)
	}
	if s := c.CASigner; s != nil && c.TrustDomain != "" && s.CA.TrustDomain.Name() != c.TrustDomain {
		return fmt.Errorf("overlay: Config.CASigner is a signer of trust domain %s, Config.TrustDomain is %s", s.CA.TrustDomain.Name(), c.TrustDomain)
	}
	return nil
}

// SaveCASignerState writes st encrypted under the node's key to a new
// file at path (tca.SaveState), for a later Config.CASigner.
func (n *Node) SaveCASignerState(path string, st *tca.SignerState) error {
	return tca.SaveState(path, st, n.kp)
}

// CAApprove makes this signer sign certificates for id with workload path
// wl ("" for none), persisted in its approvals file.
func (n *Node) CAApprove(id pki.Identity, wl string) (tca.Approval, error) {
	if n.ca == nil {
		return tca.Approval{}, ErrNoCA
	}
	return n.ca.Approve(id, wl)
}

// CARevoke stops this signer from signing for id: its next renewal fails
// once fewer than K signers approve it.
func (n *Node) CARevoke(id pki.Identity) error {
	if n.ca == nil {
		return ErrNoCA
	}
	return n.ca.Revoke(id)
}

// CAApprovals lists the identities this signer signs for.
func (n *Node) CAApprovals() ([]tca.Approval, error) {
	if n.ca == nil {
		return nil, ErrNoCA
	}
	return n.ca.Approvals()
}

// TrustDomain returns the node's SPIFFE trust domain, or "".
func (n *Node) TrustDomain() string { return n.cfg.TrustDomain }
