// Package tca is the threshold CA on the mesh: a dealerless FROST DKG
// among signers named by identity (round 1 on GossipSub, round 2 point to
// point, an echo of round 1 before finalizing), the group's self-issued CA
// certificate, and K-of-N signing of X509-SVIDs for requesters who prove
// their identity by the connection they ask on.
//
// It talks to peers only through the Network interface it defines (as dht
// and gossipsub do); the protocols themselves are state machines (dkgRun,
// signerCore) that do no I/O, driven by a Service. A signer signs only for
// identities it approved (approvals.go). It may import pki, pki/frost and
// internal/atomicfile, nothing else of this project.
package tca

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/korium/korium-tun/pki"
)

// GossipSub topics (the reference's).
const (
	TopicSigners = "ca/signers"
	TopicRound1  = "ca/dkg/round1"
	TopicCSR     = "csr"
)

// Network is what the Service needs from the node. Call must reach the
// peer on its authenticated connection (dialing it if needed) and deliver
// to its Service's HandleRPC; a Call to ourselves must reach our own.
// Subscribe calls h for each message on topic with its verified publisher
// until cancel; cancel waits for h to return.
type Network interface {
	Publish(topic string, data []byte) error
	Subscribe(topic string, h func(from pki.Identity, data []byte)) (cancel func(), err error)
	Call(ctx context.Context, to pki.Identity, req []byte) ([]byte, error)
	Connect(ctx context.Context, to pki.Identity) error
}

// Config configures a Service. Zero values mean the defaults written on
// each field.
type Config struct {
	Keypair *pki.Keypair // required
	Network Network      // required
	Logger  *slog.Logger // nil discards
	// Signer makes this node a CA signer that answers CSRs (as_ca_signer).
	Signer *SignerState
	// ApprovalsFile is where the signer keeps the identities it signs for
	// (default: none, the list lives in memory only). Conventionally the
	// signer state's path with ".approvals" appended.
	ApprovalsFile string
	// PoWBits is the network's proof-of-work difficulty: a signer refuses
	// to put a weaker nonce in a certificate (default 0: no check).
	PoWBits int
	// MaxValidity bounds the certificates a signer signs (default 24 h).
	MaxValidity time.Duration
	// RequestsPerMinute is how many new signing requests a signer accepts
	// from one requester per minute (default 10); more are refused.
	RequestsPerMinute int
	// MaxSessions caps signing sessions (each holds nonces) a signer keeps
	// at once (default 256); MaxSessionsPerRequester caps one requester's
	// share of them (default 4).
	MaxSessions             int
	MaxSessionsPerRequester int
	// SessionTTL is how long a signing session waits for its sign request
	// before its nonces are discarded (default 30 s).
	SessionTTL time.Duration
	// PresenceInterval is how often a signer announces itself on
	// ca/signers (default 10 s).
	PresenceInterval time.Duration
	// Republish is how often round-1 messages and CSRs are broadcast again
	// until answered: gossip is not a reliable broadcast (default 2 s).
	Republish time.Duration
	// CallTimeout bounds one RPC (default 5 s).
	CallTimeout time.Duration
	// CommitWait is how long a requester waits for K signers' commitments
	// (default 15 s).
	CommitWait time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Keypair == nil || c.Network == nil {
		return c, errors.New("tca: Config.Keypair and Config.Network are required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.MaxValidity, 24*time.Hour)
	def(&c.SessionTTL, 30*time.Second)
	def(&c.PresenceInterval, 10*time.Second)
	def(&c.Republish, 2*time.Second)
	def(&c.CallTimeout, 5*time.Second)
	def(&c.CommitWait, 15*time.Second)
	if c.RequestsPerMinute <= 0 {
		c.RequestsPerMinute = 10
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 256
	}
	if c.MaxSessionsPerRequester <= 0 {
		c.MaxSessionsPerRequester = 4
	}
	if c.Signer != nil {
		if c.Signer.Identity != c.Keypair.Identity() {
			return c, fmt.Errorf("tca: the signer state belongs to %s, this node is %s", c.Signer.Identity.Short(), c.Keypair.Identity().Short())
		}
		if err := c.Signer.check(); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Stats are the Service's counters, by reason.
type Stats struct {
	DKGRefused         uint64 `json:"dkg_refused"`            // DKG messages dropped: malformed, not ours, no run
	CSRAccepted        uint64 `json:"csr_accepted"`           // new signing sessions
	CSRRefused         uint64 `json:"csr_refused"`            // CSRs that failed a check (identity, trust domain, validity)
	CSRRateLimited     uint64 `json:"csr_rate_limited"`       // over a requester's rate
	CSRSessionsFull    uint64 `json:"csr_sessions_full"`      // no room for another session
	SessionsExpired    uint64 `json:"sessions_expired"`       // nonces discarded unused
	SharesSigned       uint64 `json:"shares_signed"`          // signature shares given
	SignRefused        uint64 `json:"sign_refused"`           // sign requests refused
	CommitmentsRefused uint64 `json:"commitments_refused"`    // commitments a requester dropped
	PresenceRefused    uint64 `json:"presence_refused"`       // bad presence announcements
	CommitSendBusy     uint64 `json:"commit_send_busy"`       // commitments not sent: too many sends in flight
	CSRNotApproved     uint64 `json:"csr_not_approved"`       // CSRs from identities this signer has not approved
	EnrolleeRefused    uint64 `json:"enrollee_refused"`       // CA messages from enrollees other than CSRs and sign requests
	Sessions           int    `json:"sessions"`               // signing sessions held now
	KnownSigners       int    `json:"known_signers"`          // signers heard on ca/signers
	Signer             bool   `json:"signer"`                 // this node is a signer
	TrustDomain        string `json:"trust_domain,omitempty"` // of its CA, if a signer
}

type counters struct {
	dkgRefused, csrAccepted, csrRefused, csrRateLimited, csrSessionsFull, sessionsExpired atomic.Uint64
	sharesSigned, signRefused, commitmentsRefused, presenceRefused, commitSendBusy        atomic.Uint64
	csrNotApproved, enrolleeRefused                                                       atomic.Uint64
}

// maxCommitSends bounds commitment RPCs a signer has in flight.
const maxCommitSends = 32

// maxKnownSigners bounds the presence table.
const maxKnownSigners = 256

// Service runs the CA protocols of one node.
type Service struct {
	cfg  Config
	self pki.Identity
	log  *slog.Logger
	net  Network
	now  func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sends  chan struct{} // semaphore of commitment sends

	stats counters

	mu       sync.Mutex // guards every field below
	signer   *signerCore
	dkg      *dkgRun       // the ceremony running now, or the last one (for late retransmissions)
	dkgKick  chan struct{} // wakes the running ceremony's driver
	requests map[[reqIDSize]byte]*pendingRequest
	known    map[pki.Identity]knownSigner // from ca/signers
	caCache  map[[32]byte]*CA             // parsed CA certificates by SHA-256 of their DER
	presSub  func()                       // cancels the ca/signers subscription
	subs     []func()                     // cancels the signer's subscriptions
}

type knownSigner struct {
	td   string
	fp   [32]byte
	seen time.Time
}

// New starts a Service. With Config.Signer set it answers CSRs and
// announces itself on ca/signers.
func New(cfg Config) (*Service, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Service{
		cfg: c, self: c.Keypair.Identity(), log: c.Logger, net: c.Network, now: time.Now,
		sends: make(chan struct{}, maxCommitSends), requests: map[[reqIDSize]byte]*pendingRequest{},
		known: map[pki.Identity]knownSigner{}, caCache: map[[32]byte]*CA{},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if c.Signer != nil {
		if err := s.startSigner(c.Signer, c.ApprovalsFile); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close stops the Service and waits for its goroutines.
func (s *Service) Close() error {
	s.cancel()
	s.mu.Lock()
	subs := s.subs
	s.subs = nil
	if s.presSub != nil {
		subs = append(subs, s.presSub)
		s.presSub = nil
	}
	s.mu.Unlock()
	for _, c := range subs {
		c()
	}
	s.wg.Wait()
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Service) Stats() Stats {
	c := &s.stats
	st := Stats{
		DKGRefused: c.dkgRefused.Load(), CSRAccepted: c.csrAccepted.Load(), CSRRefused: c.csrRefused.Load(),
		CSRRateLimited: c.csrRateLimited.Load(), CSRSessionsFull: c.csrSessionsFull.Load(), SessionsExpired: c.sessionsExpired.Load(),
		SharesSigned: c.sharesSigned.Load(), SignRefused: c.signRefused.Load(), CommitmentsRefused: c.commitmentsRefused.Load(),
		PresenceRefused: c.presenceRefused.Load(), CommitSendBusy: c.commitSendBusy.Load(),
		CSRNotApproved: c.csrNotApproved.Load(), EnrolleeRefused: c.enrolleeRefused.Load(),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.signer != nil {
		st.Sessions = len(s.signer.sessions)
		st.Signer = true
		st.TrustDomain = s.signer.st.CA.TrustDomain.Name()
	}
	st.KnownSigners = len(s.known)
	return st
}

// SignerState returns the state this node signs with, or nil.
func (s *Service) SignerState() *SignerState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.signer == nil {
		return nil
	}
	return s.signer.st
}

// HandleRPC answers one ProtoCA request from an authenticated peer.
func (s *Service) HandleRPC(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
	switch MessageType(req) {
	case msgDKGShare, msgCAShare:
		return nil, s.onDKGMessage(from, req)
	case msgCommitment:
		return nil, s.onCommitment(from, req)
	case msgSignReq:
		return s.onSignRequest(from, req)
	case msgCSR:
		return s.onCSRCall(from, req)
	}
	return nil, errMalformed
}

// ErrEnrollee answers an enrollee's CA message that is not part of asking
// for a certificate.
var ErrEnrollee = errors.New("tca: a node that is not a member may only ask for a certificate (CSR and sign request)")

// HandleEnrollment is HandleRPC for a peer that is not a member of a
// members-only network (an enrollee): only the two messages a requester
// sends (a CSR, a sign request) are served; the rest are refused and
// counted.
func (s *Service) HandleEnrollment(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
	switch MessageType(req) {
	case msgCSR, msgSignReq:
		return s.HandleRPC(ctx, from, req)
	}
	s.stats.enrolleeRefused.Add(1)
	return nil, ErrEnrollee
}

// parseCA parses der, caching by its hash (a bounded cache: presence and
// commitments carry the same few certificates over and over).
func (s *Service) parseCA(der []byte) (*CA, error) {
	h := sha256.Sum256(der)
	s.mu.Lock()
	ca := s.caCache[h]
	s.mu.Unlock()
	if ca != nil {
		return ca, nil
	}
	ca, err := ParseCA(der)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if len(s.caCache) >= 16 {
		clear(s.caCache)
	}
	s.caCache[h] = ca
	s.mu.Unlock()
	return ca, nil
}

// onPresence records a signer's announcement if its CA lists it.
func (s *Service) onPresence(from pki.Identity, data []byte) {
	m, err := decodePresence(data)
	if err != nil {
		s.stats.presenceRefused.Add(1)
		return
	}
	ca, err := s.parseCA(m.CACert)
	if err != nil || ca.SignerID(from) == 0 {
		s.stats.presenceRefused.Add(1)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.known[from]; !ok && len(s.known) >= maxKnownSigners {
		var oldest pki.Identity
		var at time.Time
		for id, k := range s.known {
			if at.IsZero() || k.seen.Before(at) {
				oldest, at = id, k.seen
			}
		}
		delete(s.known, oldest)
	}
	s.known[from] = knownSigner{td: ca.TrustDomain.Name(), fp: ca.Fingerprint(), seen: s.now()}
}

// ensurePresenceSub subscribes to ca/signers once (a requester's).
func (s *Service) ensurePresenceSub() error {
	s.mu.Lock()
	if s.presSub != nil {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	cancel, err := s.net.Subscribe(TopicSigners, s.onPresence)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.presSub != nil || s.ctx.Err() != nil {
		go cancel()
		return nil
	}
	s.presSub = cancel
	return nil
}

// knownSignersOf lists the signers heard for trust domain td.
func (s *Service) knownSignersOf(td string) []pki.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []pki.Identity
	for id, k := range s.known {
		if k.td == td {
			out = append(out, id)
		}
	}
	return out
}
