package tca

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/frost"
)

// A signer keeps one session per accepted CSR: the certificate it agreed
// to sign (its TBS, built by the signer itself from the checked request)
// and fresh nonces. The sign request must name that exact TBS; the session
// is removed before its nonces sign, so they sign at most once, and
// sessions expire (nonces zeroed) after Config.SessionTTL. Sessions are
// capped in total and per requester, and each requester may open only
// Config.RequestsPerMinute of them a minute.

type sessKey struct {
	from  pki.Identity
	reqID [reqIDSize]byte
}

type session struct {
	tbs     []byte
	params  leafParams
	nonces  *frost.Nonces
	created time.Time
	commit  []byte // our commitment message, resent on a repeated CSR
}

// bucket is a token bucket of new sessions for one requester.
type bucket struct {
	tokens float64
	at     time.Time
}

// maxBuckets bounds the rate-limit table; the stalest bucket goes first.
const maxBuckets = 4096

// signerCore is the signer's state machine; the Service's mutex guards it.
type signerCore struct {
	st        *SignerState
	key       *frost.KeyShare
	cfg       *Config
	approvals *approvals // has its own lock, taken inside the Service's
	sessions  map[sessKey]*session
	perReq    map[pki.Identity]int
	buckets   map[pki.Identity]*bucket
}

func newSignerCore(st *SignerState, cfg *Config, ap *approvals) *signerCore {
	return &signerCore{st: st, key: st.keyShare(), cfg: cfg, approvals: ap, sessions: map[sessKey]*session{}, perReq: map[pki.Identity]int{}, buckets: map[pki.Identity]*bucket{}}
}

// Errors by which a signer refuses; the Service counts them.
var (
	errRateLimited  = errors.New("tca: too many signing requests from this requester; wait a minute")
	errSessionsFull = errors.New("tca: signer busy: too many signing sessions")
	errNoSession    = errors.New("tca: no signing session for this request (unknown, used or expired)")
	errTBSMismatch  = errors.New("tca: the TBSCertificate is not the certificate this signer validated")
	errUnapproved   = errors.New("tca: this signer has not approved the identity (korium-tun ca approve)")
)

// checkApproved refuses an identity this signer has not approved for the
// workload of sid.
func (c *signerCore) checkApproved(from pki.Identity, p leafParams) error {
	_, wl, err := pki.ValidateSPIFFEID(p.SPIFFEID.String(), c.st.CA.TrustDomain.Name())
	if err != nil {
		return err
	}
	ok, known := c.approvals.approved(from, wl)
	switch {
	case ok:
		return nil
	case known:
		return fmt.Errorf("%w: approved with another workload path than %q", errUnapproved, wl)
	}
	return errUnapproved
}

func (c *signerCore) allow(from pki.Identity, now time.Time) bool {
	rate := float64(c.cfg.RequestsPerMinute)
	b := c.buckets[from]
	if b == nil {
		if len(c.buckets) >= maxBuckets {
			var oldest pki.Identity
			var at time.Time
			for id, x := range c.buckets {
				if at.IsZero() || x.at.Before(at) {
					oldest, at = id, x.at
				}
			}
			delete(c.buckets, oldest)
		}
		b = &bucket{tokens: rate, at: now}
		c.buckets[from] = b
	}
	b.tokens = min(rate, b.tokens+now.Sub(b.at).Minutes()*rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// remove forgets a session; its nonces are then only in the caller's hands.
func (c *signerCore) remove(k sessKey) {
	delete(c.sessions, k)
	if c.perReq[k.from]--; c.perReq[k.from] <= 0 {
		delete(c.perReq, k.from)
	}
}

// expire discards sessions older than the TTL and reports how many.
func (c *signerCore) expire(now time.Time) int {
	n := 0
	for k, sess := range c.sessions {
		if now.Sub(sess.created) > c.cfg.SessionTTL {
			c.remove(k)
			sess.nonces.Discard()
			n++
		}
	}
	return n
}

// onCSR checks a CSR from (the authenticated publisher) and returns the
// commitment message to send back: the existing one for a repeated CSR.
func (c *signerCore) onCSR(from pki.Identity, m *csrMsg, now time.Time) ([]byte, error) {
	k := sessKey{from, m.ReqID}
	if sess := c.sessions[k]; sess != nil {
		return sess.commit, nil
	}
	p, err := checkCSR(c.st.CA, from, m, now, c.cfg.MaxValidity)
	if err != nil {
		return nil, err
	}
	if err := pki.CheckPoW(from, m.Nonce, c.cfg.PoWBits); err != nil {
		return nil, fmt.Errorf("tca: the certificate would carry a nonce peers refuse: %w", err)
	}
	if err := c.checkApproved(from, p); err != nil {
		return nil, err
	}
	if len(c.sessions) >= c.cfg.MaxSessions {
		c.expire(now)
	}
	if len(c.sessions) >= c.cfg.MaxSessions || c.perReq[from] >= c.cfg.MaxSessionsPerRequester {
		return nil, errSessionsFull
	}
	if !c.allow(from, now) {
		return nil, errRateLimited
	}
	tbs, err := leafTBS(c.st.CA, p)
	if err != nil {
		return nil, err
	}
	nonces := frost.Commit(c.st.ID, c.st.Secret)
	cm := nonces.Commitment()
	sess := &session{tbs: tbs, params: p, nonces: nonces, created: now,
		commit: (&commitmentMsg{ReqID: m.ReqID, ID: c.st.ID, Hide: cm.Hiding, Bind: cm.Binding, CACert: c.st.CA.DER}).encode()}
	c.sessions[k] = sess
	c.perReq[from]++
	return sess.commit, nil
}

// onSignRequest answers a requester's sign request with our share. The
// session goes first: whatever the request holds, its nonces never sign
// again.
func (c *signerCore) onSignRequest(from pki.Identity, m *signReqMsg) ([]byte, error) {
	k := sessKey{from, m.ReqID}
	sess := c.sessions[k]
	if sess == nil {
		return nil, errNoSession
	}
	c.remove(k)
	if !bytes.Equal(m.TBS, sess.tbs) {
		sess.nonces.Discard()
		return nil, errTBSMismatch
	}
	if err := c.checkApproved(from, sess.params); err != nil {
		sess.nonces.Discard() // revoked since the CSR
		return nil, err
	}
	for _, cm := range m.Commitments {
		if int(cm.ID) > len(c.st.CA.Signers) {
			sess.nonces.Discard()
			return nil, fmt.Errorf("tca: commitment from identifier %d, the CA has %d signers", cm.ID, len(c.st.CA.Signers))
		}
	}
	z, err := frost.Sign(c.key, sess.nonces, sess.tbs, m.Commitments)
	if err != nil {
		return nil, err
	}
	return (&signShareMsg{Z: z}).encode(), nil
}

// ---- the Service's signer side ----

func (s *Service) startSigner(st *SignerState, approvalsFile string) error {
	ap, err := loadApprovals(approvalsFile)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.signer = newSignerCore(st, &s.cfg, ap)
	s.mu.Unlock()
	cancel, err := s.net.Subscribe(TopicCSR, s.onCSR)
	if err != nil {
		return fmt.Errorf("tca: subscribing to %s: %w", TopicCSR, err)
	}
	s.mu.Lock()
	s.subs = append(s.subs, cancel)
	s.mu.Unlock()
	if err := s.ensurePresenceSub(); err != nil {
		return err
	}
	pres := (&presenceMsg{CACert: st.CA.DER}).encode()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.signerLoop(pres)
	}()
	s.log.Info("CA signer running", "trust_domain", st.CA.TrustDomain.Name(), "signer", st.ID,
		"of", len(st.CA.Signers), "threshold", st.CA.Threshold, "approved", len(ap.m), "approvals_file", approvalsFile)
	return nil
}

// signerLoop announces the signer and expires sessions.
func (s *Service) signerLoop(pres []byte) {
	t := time.NewTicker(min(s.cfg.PresenceInterval, s.cfg.SessionTTL/2))
	defer t.Stop()
	var last time.Time
	for {
		if now := s.now(); now.Sub(last) >= s.cfg.PresenceInterval {
			if err := s.net.Publish(TopicSigners, pres); err == nil {
				last = now
			}
		}
		s.mu.Lock()
		if n := s.signer.expire(s.now()); n > 0 {
			s.stats.sessionsExpired.Add(uint64(n))
		}
		s.mu.Unlock()
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// csr checks a CSR from (its authenticated sender) and returns our
// commitment, or the refusal's reason and error; counted either way.
func (s *Service) csr(from pki.Identity, m *csrMsg) ([]byte, byte, error) {
	s.mu.Lock()
	if s.signer == nil {
		s.mu.Unlock()
		return nil, refuseNotSigner, errNotSigner
	}
	had := s.signer.sessions[sessKey{from, m.ReqID}] != nil
	commit, err := s.signer.onCSR(from, m, s.now())
	s.mu.Unlock()
	switch {
	case errors.Is(err, errRateLimited):
		s.stats.csrRateLimited.Add(1)
		return nil, refuseRateLimited, err
	case errors.Is(err, errSessionsFull):
		s.stats.csrSessionsFull.Add(1)
		return nil, refuseBusy, err
	case errors.Is(err, errUnapproved):
		s.stats.csrNotApproved.Add(1)
		s.log.Debug("CSR from an identity not approved", "from", from.Short(), "err", err)
		return nil, refuseNotApproved, err
	case err != nil:
		s.stats.csrRefused.Add(1)
		s.log.Debug("CSR refused", "from", from.Short(), "err", err)
		return nil, refuseInvalid, err
	}
	if !had {
		s.stats.csrAccepted.Add(1)
	}
	return commit, 0, nil
}

// onCSR handles a CSR broadcast: checked, a session opened, and our
// commitment sent to the requester by RPC (in the background, bounded).
// A refusal is silent: the requester asks by RPC to hear why.
func (s *Service) onCSR(from pki.Identity, data []byte) {
	m, err := decodeCSR(data)
	if err != nil {
		s.stats.csrRefused.Add(1)
		return
	}
	commit, _, err := s.csr(from, m)
	if err != nil {
		return
	}
	select {
	case s.sends <- struct{}{}:
	default:
		s.stats.commitSendBusy.Add(1)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sends }()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.CallTimeout)
		defer cancel()
		if _, err := s.net.Call(ctx, from, commit); err != nil {
			s.log.Debug("sending a commitment failed", "to", from.Short(), "err", err)
		}
	}()
}

// onCSRCall answers a CSR sent by RPC with our commitment or a refusal
// that says why (the requester counts them: "2 of the 3 needed approved").
func (s *Service) onCSRCall(from pki.Identity, data []byte) ([]byte, error) {
	m, err := decodeCSR(data)
	if err != nil {
		s.stats.csrRefused.Add(1)
		return nil, err
	}
	commit, reason, err := s.csr(from, m)
	if err != nil {
		return (&refusalMsg{ReqID: m.ReqID, Reason: reason, Text: err.Error()}).encode(), nil
	}
	return commit, nil
}

func (s *Service) onSignRequest(from pki.Identity, req []byte) ([]byte, error) {
	m, err := decodeSignReq(req)
	if err != nil {
		s.stats.signRefused.Add(1)
		return nil, err
	}
	s.mu.Lock()
	if s.signer == nil {
		s.mu.Unlock()
		s.stats.signRefused.Add(1)
		return nil, errNotSigner
	}
	resp, err := s.signer.onSignRequest(from, m)
	s.mu.Unlock()
	if err != nil {
		s.stats.signRefused.Add(1)
		s.log.Debug("sign request refused", "from", from.Short(), "err", err)
		return nil, err
	}
	s.stats.sharesSigned.Add(1)
	return resp, nil
}
