package overlay

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/internal/atomicfile"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
	"github.com/korium/korium-tun/rpc"
)

// Members-only networks (issue 12, parts 2 and 3). A node given a CA
// (Config.Members.CA, the threshold CA's certificate) presents its own
// CA-signed leaf in every handshake once it has one, renews it through the
// mesh at two thirds of its life, and classifies every connection:
//
//   - member: the peer presented a leaf for its key, chained to the CA, of
//     the CA's trust domain, valid now (pki.VerifyMember). In a
//     members-only network the node closes the connection when that leaf
//     expires (unless the peer pushed a renewed one first).
//   - enrollee: not a member, let in by a CA signer of a members-only
//     network so it can ask for a certificate, and nothing else: its
//     requests are served by a separate rpc.Server that answers only the
//     CSR and sign request (tca.Service.HandleEnrollment), it is no gossip
//     peer, no DHT seed, not routable (no IP packets either way), counted
//     and capped, and closed after MembersConfig.EnrolleeTTL.
//   - open: neither, accepted because the node is not members-only.
//
// A members-only node that is not a signer refuses every non-member at the
// handshake, counted by reason and logged once per peer. The classes are
// decided here, behind small calls from the node (memberTLS, admit,
// rpcFor, enrollee, the sweep and renewal loops), so the policy moves with
// this file.

// MembersConfig makes the node part of a network whose members hold a
// certificate from one CA. The zero value means no membership.
type MembersConfig struct {
	// CA is the CA members' certificates chain to (tca.ParseCA of its
	// certificate). Nil: the node presents its self-signed certificate and
	// accepts everyone; the other fields must be zero.
	CA *tca.CA
	// Leaf is the node's own certificate from CA (DER, for the node's key),
	// or nil while it has none (then `cert request` gets one, see
	// InstallLeaf). It may have expired: the node then renews it first.
	Leaf []byte
	// LeafFile, when set, is rewritten (PEM, atomically) with every leaf
	// the node installs or renews.
	LeafFile string
	// MembersOnly refuses peers without a valid certificate from CA at the
	// handshake. A signer of CA lets them in as enrollees (CA protocol
	// only). Without it the node presents its leaf but accepts everyone.
	MembersOnly bool
	// Validity is the lifetime renewed leaves ask for (default: the
	// current leaf's, which `cert request` sets, 24 h by default).
	Validity time.Duration
	// MaxEnrollees caps enrollee connections at once (default 64); more
	// are refused at the handshake.
	MaxEnrollees int
	// EnrolleeTTL closes an enrollee's connection this long after it
	// opened (default 2 minutes: a request takes seconds).
	EnrolleeTTL time.Duration
	// Sweep is how often peers' certificates are checked for expiry
	// (default 5 s): an expired member is disconnected within it.
	Sweep time.Duration
}

// ErrNoMembership is returned by InstallLeaf on a node without a CA.
var ErrNoMembership = errors.New("overlay: the node has no CA to check certificates against (Config.Members.CA, --ca-cert)")

type memberClass int32

const (
	classOpen     memberClass = iota // accepted without a member certificate (not members-only)
	classMember                      // presented a valid certificate of our CA
	classEnrollee                    // not a member; may only ask for a certificate
)

func (c memberClass) String() string {
	switch c {
	case classMember:
		return "member"
	case classEnrollee:
		return "enrollee"
	}
	return ""
}

// peerMember is a connection's membership; class and notAfter change only
// when the peer pushes a renewed certificate.
type peerMember struct {
	class    atomic.Int32
	notAfter atomic.Int64 // unix ns: when the peer's certificate expires (members)
	// vouched is the peer's SPIFFE ID once its handshake certificate was
	// verified against our CA (peerUp, before the certificate is dropped),
	// or the one of the newest renewal it pushed; nil when neither was.
	// The firewall's SPIFFE rules match only this, read at each packet.
	vouched atomic.Pointer[string]
}

// memberOf is p's membership, kept in its Ext by admit (nil for a peer
// admitted without membership).
func memberOf(p *peers.Peer) *peerMember {
	m, _ := p.Ext.(*peerMember)
	return m
}

// classOf is p's membership class.
func classOf(p *peers.Peer) memberClass {
	if m := memberOf(p); m != nil {
		return memberClass(m.class.Load())
	}
	return classOpen
}

// enrollee reports whether p may only ask for a certificate.
func enrollee(p *peers.Peer) bool { return classOf(p) == classEnrollee }

// ownLeaf is the node's current certificate.
type ownLeaf struct {
	tls  tls.Certificate
	cert *x509.Certificate
	info pki.MemberInfo
}

// members is the node's membership state. Its fields are set in
// initMembers and never change, except the atomics and the log limiter.
type members struct {
	cfg       MembersConfig
	leaf      atomic.Pointer[ownLeaf]
	kick      chan struct{} // wakes renewLoop: a new leaf
	enrollRPC *rpc.Server   // serves enrollees' connections

	refused          map[pki.MemberReason]*atomic.Uint64 // handshakes refused, by reason (keys fixed at init)
	refusedFull      atomic.Uint64                       // enrollees refused: MaxEnrollees reached
	enrolleeProto    [256]atomic.Uint64                  // enrollees' requests refused, by protocol
	membersAdmitted  atomic.Uint64
	enrolleesAdmit   atomic.Uint64
	expiredClosed    atomic.Uint64 // members disconnected: their certificate expired
	enrolleeTTL      atomic.Uint64 // enrollees disconnected: EnrolleeTTL passed
	renewed          atomic.Uint64
	renewFailed      atomic.Uint64
	leafPushed       atomic.Uint64 // renewed leaves sent to peers
	leafPushFailed   atomic.Uint64
	leafUpdates      atomic.Uint64 // peers' renewed leaves taken
	leafRenamed      atomic.Uint64 // of those, leaves that gave the peer another SPIFFE ID (or its first vouched one)
	leafUpdateRefuse atomic.Uint64

	logMu  sync.Mutex // guards logged
	logged map[pki.Identity]time.Time
}

// Limits of the membership state.
const (
	defaultMaxEnrollees = 64
	maxRefusalLog       = 4096             // peers remembered for logging once
	refusalLogEvery     = 10 * time.Minute // per peer
	leafPushers         = 8                // renewed leaves sent at once
	enrolleeMsgSize     = 4 << 10          // cap of an enrollee's non-CA requests (all refused)
)

// initMembers sets up membership (after the CA service, before TLS).
func (n *Node) initMembers() error {
	c := n.cfg.Members
	if c.CA == nil {
		return nil
	}
	if c.MaxEnrollees <= 0 {
		c.MaxEnrollees = defaultMaxEnrollees
	}
	if c.EnrolleeTTL <= 0 {
		c.EnrolleeTTL = 2 * time.Minute
	}
	if c.Sweep <= 0 {
		c.Sweep = 5 * time.Second
	}
	m := &members{cfg: c, kick: make(chan struct{}, 1), refused: map[pki.MemberReason]*atomic.Uint64{}, logged: map[pki.Identity]time.Time{}}
	for _, r := range pki.MemberReasons {
		m.refused[r] = new(atomic.Uint64)
	}
	if c.Leaf != nil {
		l, err := n.parseOwnLeaf(c.Leaf, false)
		if err != nil {
			return fmt.Errorf("overlay: Config.Members.Leaf: %w", err)
		}
		m.leaf.Store(l)
		if time.Now().After(l.cert.NotAfter) {
			n.cfg.Logger.Warn("our certificate has expired: renewing it; members refuse us until then", "not_after", l.cert.NotAfter)
		}
	}
	rc := rpc.Config{HandlerTimeout: n.cfg.RequestTimeout, StreamTimeout: n.cfg.RPC.StreamTimeout, MaxConcurrent: 8, PeerBudget: 64 << 10, NodeBudget: 1 << 20}
	refusedProtos := []byte{rpc.ProtoDHT, rpc.ProtoGossip, rpc.ProtoRelay, rpc.ProtoApp}
	for _, p := range refusedProtos {
		rc.MaxSize[p] = enrolleeMsgSize
	}
	rc.MaxSize[rpc.ProtoCA] = DefaultCAMessageSize
	m.enrollRPC = rpc.NewServer(rc)
	for _, p := range refusedProtos {
		m.enrollRPC.Handle(p, func(context.Context, pki.Identity, []byte) ([]byte, error) {
			m.enrolleeProto[p].Add(1)
			return nil, rpc.RefuseError("members only: a node that is not a member may only ask for a certificate")
		})
	}
	m.enrollRPC.Handle(rpc.ProtoCA, func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		if n.ca == nil {
			return nil, rpc.RefuseError("no CA here")
		}
		n.touch(from)
		return n.ca.HandleEnrollment(ctx, from, req)
	})
	n.mem = m
	if n.ca == nil && c.Leaf != nil {
		n.cfg.Logger.Warn("pubsub is disabled: the node cannot renew its certificate")
	}
	return nil
}

// startMembers starts the membership loops, once every room is wired.
func (n *Node) startMembers() {
	if n.mem == nil {
		return
	}
	n.goLoop(n.memberSweepLoop)
	if n.ca != nil {
		n.goLoop(n.renewLoop)
	}
}

// checkMembersConfig validates Config.Members (from checkCAConfig) and
// makes the CA's trust domain the node's when none is set.
func (c *Config) checkMembersConfig() error {
	m := &c.Members
	if m.CA == nil {
		if m.Leaf != nil || m.LeafFile != "" || m.MembersOnly {
			return errors.New("overlay: Config.Members.Leaf, LeafFile and MembersOnly need Config.Members.CA")
		}
		return nil
	}
	td := m.CA.TrustDomain.Name()
	if c.TrustDomain == "" {
		c.TrustDomain = td
	} else if c.TrustDomain != td {
		return fmt.Errorf("overlay: Config.TrustDomain is %s, the CA of Config.Members is of %s", c.TrustDomain, td)
	}
	if s := c.CASigner; s != nil && !bytes.Equal(s.CA.GroupKey, m.CA.GroupKey) {
		return errors.New("overlay: Config.CASigner signs for another CA than Config.Members.CA")
	}
	return nil
}

// parseOwnLeaf checks der as our own certificate: our key and nonce,
// chained to our CA. An installed one must be valid now; a loaded one may
// have expired (it is renewed at once).
func (n *Node) parseOwnLeaf(der []byte, mustBeValid bool) (*ownLeaf, error) {
	c := n.cfg.Members
	tc, cert, err := pki.LeafCertificate(n.kp, der)
	if err != nil {
		return nil, err
	}
	at := time.Now()
	if !mustBeValid && at.After(cert.NotAfter) {
		at = cert.NotAfter // check the rest as of its last valid moment
	}
	info, err := pki.VerifyMember(cert, c.CA.Cert, c.CA.TrustDomain, at)
	if err != nil {
		return nil, fmt.Errorf("not a certificate of this CA for this node: %w", err)
	}
	return &ownLeaf{tls: tc, cert: cert, info: info}, nil
}

// memberTLS is the TLS configuration with our leaf and the membership
// check.
func (n *Node) memberTLS() pki.MemberTLS {
	mt := pki.MemberTLS{TLSConfig: n.tlsConf}
	if n.mem != nil {
		mt.Leaf = func() *tls.Certificate {
			if l := n.mem.leaf.Load(); l != nil {
				return &l.tls
			}
			return nil
		}
		mt.Check = n.checkMember
	}
	return mt
}

// mayEnroll reports whether this node lets non-members in to ask for a
// certificate: it is a signer of the members' CA.
func (n *Node) mayEnroll() bool {
	if n.ca == nil {
		return false
	}
	st := n.ca.SignerState()
	return st != nil && bytes.Equal(st.CA.GroupKey, n.mem.cfg.CA.GroupKey)
}

func (n *Node) enrolleeCount() int { return len(n.peersWhere(enrollee)) }

// peersWhere lists the connected peers for which keep is true.
func (n *Node) peersWhere(keep func(*peers.Peer) bool) []*peers.Peer {
	var out []*peers.Peer
	for p := range n.peers.Snapshot().All() {
		if keep(p) {
			out = append(out, p)
		}
	}
	return out
}

var errEnrolleesFull = errors.New("not a member, and the node admits no more enrollees now")

// checkMember is the handshake's membership check (both directions).
func (n *Node) checkMember(cert *x509.Certificate, id pki.Identity) error {
	m := n.mem
	if !m.cfg.MembersOnly {
		return nil
	}
	_, err := pki.VerifyMember(cert, m.cfg.CA.Cert, m.cfg.CA.TrustDomain, time.Now())
	if err == nil {
		return nil
	}
	if n.mayEnroll() {
		if n.enrolleeCount() < m.cfg.MaxEnrollees {
			return nil // an enrollee: classified at install
		}
		m.refusedFull.Add(1)
		n.logRefusal(id, "enrollees_full", errEnrolleesFull)
		return errEnrolleesFull
	}
	var me *pki.MemberError
	if errors.As(err, &me) {
		m.refused[me.Reason].Add(1)
		n.logRefusal(id, string(me.Reason), err)
	}
	return err
}

// logRefusal logs a refused peer once per refusalLogEvery (bounded).
func (n *Node) logRefusal(id pki.Identity, reason string, err error) {
	m := n.mem
	now := time.Now()
	m.logMu.Lock()
	last, seen := m.logged[id]
	if seen && now.Sub(last) < refusalLogEvery {
		m.logMu.Unlock()
		return
	}
	if !seen && len(m.logged) >= maxRefusalLog {
		for k, t := range m.logged {
			if now.Sub(t) >= refusalLogEvery {
				delete(m.logged, k)
			}
		}
		if len(m.logged) >= maxRefusalLog {
			m.logMu.Unlock()
			return // counted, not logged
		}
	}
	m.logged[id] = now
	m.logMu.Unlock()
	n.cfg.Logger.Info("refused a peer that is not a member", "peer", id.String(), "reason", reason, "err", err)
}

// admit classifies a new connection (the peer set's Admit, before the
// connection is published): an enrollee is not routable.
func (n *Node) admit(p *peers.Peer, cs tls.ConnectionState) error {
	m := n.mem
	if m == nil {
		return nil
	}
	pm := new(peerMember)
	p.Ext = pm
	if len(cs.PeerCertificates) != 1 {
		return nil
	}
	info, err := pki.VerifyMember(cs.PeerCertificates[0], m.cfg.CA.Cert, m.cfg.CA.TrustDomain, time.Now())
	switch {
	case err == nil:
		pm.class.Store(int32(classMember))
		pm.notAfter.Store(info.NotAfter.UnixNano())
		m.membersAdmitted.Add(1)
		return nil
	case !m.cfg.MembersOnly:
		return nil
	case !n.mayEnroll():
		// Expired between the handshake and now, or no longer a signer.
		if me := (*pki.MemberError)(nil); errors.As(err, &me) {
			m.refused[me.Reason].Add(1)
		}
		return err
	case n.enrolleeCount() >= m.cfg.MaxEnrollees:
		m.refusedFull.Add(1)
		return errEnrolleesFull
	}
	pm.class.Store(int32(classEnrollee))
	p.Routable = false // no IP packets to or from it
	m.enrolleesAdmit.Add(1)
	n.cfg.Logger.Info("admitted a non-member to ask for a certificate (CA protocol only)", "peer", p.ID.String(), "why_not_member", err)
	return nil
}

// rpcFor is the request server for p's connection: enrollees get the one
// that serves only the CA's enrollment messages.
func (n *Node) rpcFor(p *peers.Peer) *rpc.Server {
	if enrollee(p) {
		return n.mem.enrollRPC
	}
	return n.rpc
}

// memberSweepLoop closes members' connections whose certificate expired
// (members-only) and enrollees' past their window.
func (n *Node) memberSweepLoop() {
	t := time.NewTicker(n.mem.cfg.Sweep)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			n.sweepMembers(now)
		}
	}
}

func (n *Node) sweepMembers(now time.Time) {
	m := n.mem
	var expired, over []*peers.Peer
	for p := range n.peers.Snapshot().All() {
		switch classOf(p) {
		case classMember:
			if m.cfg.MembersOnly && now.UnixNano() > memberOf(p).notAfter.Load() {
				expired = append(expired, p)
			}
		case classEnrollee:
			if now.Sub(p.Since) > m.cfg.EnrolleeTTL {
				over = append(over, p)
			}
		}
	}
	for _, p := range expired {
		m.expiredClosed.Add(1)
		na := time.Unix(0, memberOf(p).notAfter.Load())
		n.cfg.Logger.Info("disconnecting a member whose certificate expired", "peer", p.ID.String(), "not_after", na, "late", now.Sub(na).Round(time.Millisecond))
		p.Conn.CloseWithError(peers.CodeRefused, "certificate expired")
	}
	for _, p := range over {
		m.enrolleeTTL.Add(1)
		p.Conn.CloseWithError(peers.CodeNormal, "enrollment window over")
	}
}

// renewAt is when a leaf is renewed: at two thirds of its life.
func renewAt(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}

// renewRetry is how long to wait after a failed renewal: a tenth of the
// time left, between 2 s and a minute; 30 s once expired.
func renewRetry(notAfter, now time.Time) time.Duration {
	left := notAfter.Sub(now)
	if left <= 0 {
		return 30 * time.Second
	}
	return min(max(left/10, 2*time.Second), time.Minute)
}

// renewLoop renews our leaf through the mesh at two thirds of its life.
func (n *Node) renewLoop() {
	m := n.mem
	var retry time.Duration
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		l := m.leaf.Load()
		wait := time.Duration(1<<62 - 1)
		if l != nil {
			wait = time.Until(renewAt(l.cert))
			if retry > 0 {
				wait = retry
			}
		}
		timer.Reset(max(wait, 0))
		select {
		case <-n.ctx.Done():
			return
		case <-m.kick:
			retry = 0
			continue
		case <-timer.C:
		}
		if l == nil || m.leaf.Load() != l {
			continue
		}
		if err := n.renewOnce(l); err != nil {
			m.renewFailed.Add(1)
			retry = renewRetry(l.cert.NotAfter, time.Now())
			n.cfg.Logger.Warn("certificate renewal failed", "err", err, "not_after", l.cert.NotAfter, "retry_in", retry)
			continue
		}
		retry = 0
	}
}

func (n *Node) renewOnce(l *ownLeaf) error {
	m := n.mem
	validity := m.cfg.Validity
	if validity <= 0 {
		validity = l.cert.NotAfter.Sub(l.cert.NotBefore)
	}
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Minute)
	defer cancel()
	cert, err := n.ca.RequestCertificate(ctx, tca.RequestConfig{TrustDomain: m.cfg.CA.TrustDomain.Name(), Workload: l.info.Workload, Validity: validity, CA: m.cfg.CA, Attempts: 2})
	if err != nil {
		return err
	}
	if err := n.InstallLeaf(cert.DER); err != nil {
		return err
	}
	m.renewed.Add(1)
	n.cfg.Logger.Info("renewed our certificate", "not_after", cert.Leaf.NotAfter, "signers", len(cert.Signers))
	return nil
}

// InstallLeaf makes der (a certificate of the node's CA for its key, valid
// now, e.g. from RequestCACertificate) the certificate the node presents
// from its next handshake on, writes it to Config.Members.LeafFile, and
// renews it at two thirds of its life. Replacing a valid leaf, it sends
// the new one to connected members (so they do not disconnect us when the
// old one expires); becoming a member (no valid leaf before), it closes
// its connections so that peers that saw a non-member see a member when
// they reconnect.
func (n *Node) InstallLeaf(der []byte) error {
	m := n.mem
	if m == nil {
		return ErrNoMembership
	}
	l, err := n.parseOwnLeaf(der, true)
	if err != nil {
		return err
	}
	prev := m.leaf.Load()
	if prev != nil && bytes.Equal(prev.cert.Raw, der) {
		return nil
	}
	if prev != nil && l.cert.NotAfter.Before(prev.cert.NotAfter) {
		return fmt.Errorf("overlay: the certificate expires before the one the node has (%s)", prev.cert.NotAfter.Format(time.RFC3339))
	}
	wasMember := prev != nil && time.Now().Before(prev.cert.NotAfter)
	if !m.leaf.CompareAndSwap(prev, l) {
		return errors.New("overlay: another certificate was installed at the same time")
	}
	select {
	case m.kick <- struct{}{}:
	default:
	}
	var werr error
	if m.cfg.LeafFile != "" {
		if werr = atomicfile.Write(m.cfg.LeafFile, tca.CertPEM(der), 0o644); werr != nil {
			werr = fmt.Errorf("overlay: the certificate is in use but could not be saved: %w", werr)
			n.cfg.Logger.Error("saving our certificate failed", "path", m.cfg.LeafFile, "err", werr)
		}
	}
	if wasMember {
		n.goLoop(func() { n.pushLeaf(der) })
	} else {
		n.cfg.Logger.Info("now a member: reconnecting to present the certificate", "spiffe_id", l.info.SPIFFEID.String(), "not_after", l.cert.NotAfter)
		n.goLoop(n.reconnectAll)
	}
	return werr
}

// reconnectAll closes every connection; bootstrap peers are redialed, the
// rest reconnect on demand.
func (n *Node) reconnectAll() {
	for _, p := range n.peersWhere(func(*peers.Peer) bool { return true }) {
		p.Conn.CloseWithError(peers.CodeNormal, "membership changed: reconnecting")
	}
}

// pushLeaf sends a renewed leaf to every member connected to us.
func (n *Node) pushLeaf(der []byte) {
	msg := tca.EncodeLeafUpdate(der)
	to := n.peersWhere(func(p *peers.Peer) bool { return classOf(p) == classMember })
	sem := make(chan struct{}, leafPushers)
	var wg sync.WaitGroup
	for _, p := range to {
		select {
		case sem <- struct{}{}:
		case <-n.ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			defer cancel()
			if _, err := n.rpc.Call(ctx, p.Conn, rpc.ProtoCA, msg); err != nil {
				n.mem.leafPushFailed.Add(1)
				n.cfg.Logger.Debug("sending our renewed certificate failed", "peer", p.ID.Short(), "err", err)
				return
			}
			n.mem.leafPushed.Add(1)
		}()
	}
	wg.Wait()
}

// onLeafUpdate takes a connected peer's renewed certificate: one for its
// own key, of our CA, valid now, expiring later than the one we hold.
func (n *Node) onLeafUpdate(from pki.Identity, req []byte) ([]byte, error) {
	m := n.mem
	p := n.peer(from)
	if m == nil || p == nil || enrollee(p) || memberOf(p) == nil {
		return nil, rpc.RefuseError("no membership here")
	}
	pm := memberOf(p)
	err := func() error {
		der, err := tca.DecodeLeafUpdate(req)
		if err != nil {
			return err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		info, err := pki.VerifyMember(cert, m.cfg.CA.Cert, m.cfg.CA.TrustDomain, time.Now())
		if err != nil {
			return err
		}
		if info.Identity != from {
			return fmt.Errorf("a certificate of %s sent by %s", info.Identity.Short(), from.Short())
		}
		newest := false
		for {
			old := pm.notAfter.Load()
			if info.NotAfter.UnixNano() <= old {
				break
			}
			if pm.notAfter.CompareAndSwap(old, info.NotAfter.UnixNano()) {
				newest = true
				break
			}
		}
		// The newest certificate names the peer for the firewall: a CA
		// that approved it again with another workload path renamed it,
		// and the rules of its old name must stop admitting it now, not
		// when it reconnects.
		if sid := info.SPIFFEID.String(); newest {
			if was := pm.vouched.Load(); was == nil || *was != sid {
				pm.vouched.Store(&sid)
				m.leafRenamed.Add(1)
				n.cfg.Logger.Info("a peer's renewed certificate names it anew", "peer", from.String(), "spiffe_id", sid)
			}
		}
		pm.class.CompareAndSwap(int32(classOpen), int32(classMember))
		return nil
	}()
	if err != nil {
		m.leafUpdateRefuse.Add(1)
		return nil, rpc.RefuseError("certificate refused: " + err.Error())
	}
	m.leafUpdates.Add(1)
	return nil, nil
}

// ---- status ----

// MembersStatus is the membership part of Status.
type MembersStatus struct {
	TrustDomain string     `json:"trust_domain"`
	CAKey       string     `json:"ca_key"`
	MembersOnly bool       `json:"members_only"`
	Member      bool       `json:"member"` // our certificate is valid now
	SPIFFEID    string     `json:"spiffe_id,omitempty"`
	NotAfter    *time.Time `json:"not_after,omitempty"`
	RenewAt     *time.Time `json:"renew_at,omitempty"`
	Members     int        `json:"members"`   // connected peers that are members
	Enrollees   int        `json:"enrollees"` // connected peers that may only ask for a certificate
	// Refused counts handshakes refused by reason (pki.MemberReason and
	// "enrollees_full"); Enrollee counts what enrollees tried and got
	// nothing for ("dht", "gossip", "relay", "app", "ip").
	Refused  map[string]uint64 `json:"refused"`
	Enrollee map[string]uint64 `json:"enrollee_refused"`
	Counters map[string]uint64 `json:"counters"`
}

// memberPeerStatus fills a peer's membership fields.
func (n *Node) memberPeerStatus(p *peers.Peer, ps *PeerStatus) {
	ps.Membership = classOf(p).String()
	if classOf(p) == classMember {
		t := time.Unix(0, memberOf(p).notAfter.Load()).UTC()
		ps.CertNotAfter = &t
	}
}

func (n *Node) membersStatus() *MembersStatus {
	m := n.mem
	if m == nil {
		return nil
	}
	st := &MembersStatus{TrustDomain: m.cfg.CA.TrustDomain.Name(), CAKey: fmt.Sprintf("%x", m.cfg.CA.GroupKey), MembersOnly: m.cfg.MembersOnly,
		Refused: map[string]uint64{"enrollees_full": m.refusedFull.Load()}, Enrollee: map[string]uint64{}}
	if l := m.leaf.Load(); l != nil {
		na, ra := l.cert.NotAfter.UTC(), renewAt(l.cert).UTC()
		st.SPIFFEID, st.NotAfter, st.RenewAt, st.Member = l.info.SPIFFEID.String(), &na, &ra, time.Now().Before(na)
	}
	for r, c := range m.refused {
		st.Refused[string(r)] = c.Load()
	}
	for name, p := range map[string]byte{"dht": rpc.ProtoDHT, "gossip": rpc.ProtoGossip, "relay": rpc.ProtoRelay, "app": rpc.ProtoApp} {
		st.Enrollee[name] = m.enrolleeProto[p].Load()
	}
	st.Enrollee["ip"] = n.dp.Counters.RxNotRoutable.Load() // only enrollees are not routable
	if n.ca != nil {
		st.Enrollee["ca"] = n.ca.Stats().EnrolleeRefused
	}
	for p := range n.peers.Snapshot().All() {
		switch classOf(p) {
		case classMember:
			st.Members++
		case classEnrollee:
			st.Enrollees++
		}
	}
	st.Counters = map[string]uint64{
		"members_admitted":       m.membersAdmitted.Load(),
		"enrollees_admitted":     m.enrolleesAdmit.Load(),
		"expired_disconnected":   m.expiredClosed.Load(),
		"enrollees_timed_out":    m.enrolleeTTL.Load(),
		"renewed":                m.renewed.Load(),
		"renew_failed":           m.renewFailed.Load(),
		"leaf_pushed":            m.leafPushed.Load(),
		"leaf_push_failed":       m.leafPushFailed.Load(),
		"peer_leaf_updates":      m.leafUpdates.Load(),
		"peer_leaf_renamed":      m.leafRenamed.Load(),
		"peer_leaf_refused":      m.leafUpdateRefuse.Load(),
		"enrollee_rpc_too_large": m.enrollRPC.Stats().TooLarge,
	}
	return st
}

// MembersLeafFile is the file the node keeps its certificate in
// (Config.Members.LeafFile), or "".
func (n *Node) MembersLeafFile() string {
	if n.mem == nil {
		return ""
	}
	return n.mem.cfg.LeafFile
}
