package tca

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"filippo.io/edwards25519"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/frost"
)

// RequestConfig is the reference's CaRequestConfig.
type RequestConfig struct {
	TrustDomain string
	Workload    string // optional workload path
	// Validity is the certificate's lifetime (default 1 h; signers refuse
	// more than their MaxValidity, 24 h by default).
	Validity time.Duration
	// CAKey pins the CA's group key. Without it the requester takes the CA
	// the signers of TrustDomain answer for, and refuses to choose when
	// two different CAs answer.
	CAKey ed25519.PublicKey
	// CA, when known (a member's configured CA certificate), pins its key
	// and names the signers to ask directly: a node that is not yet a
	// member reaches them only that way, and their answers say which of
	// them approved it.
	CA *CA
	// Attempts bounds signing rounds (default 4): a round that loses a
	// signer or gets a bad share is retried without it.
	Attempts int
}

// Certificate is a signed X509-SVID and the CA it chains to.
type Certificate struct {
	DER      []byte
	Leaf     *x509.Certificate
	CA       *CA
	SPIFFEID spiffeid.ID
	Signers  []pki.Identity // who signed
	Attempts int
	// Excluded lists signers left out of later rounds and why.
	Excluded map[pki.Identity]string
}

// pendingRequest is one signing round waiting for commitments.
type pendingRequest struct {
	td    string
	pin   ed25519.PublicKey
	byCA  map[[32]byte]*caCommits // commitments grouped by the CA they are for
	kick  chan struct{}
	skips map[pki.Identity]bool // excluded signers
	// Answers to the CSR sent by RPC: refusals by signer, and calls in
	// flight or failed (retried every Republish).
	refused  map[pki.Identity]*refusalMsg
	inflight map[pki.Identity]bool
	failed   map[pki.Identity]string
}

type caCommits struct {
	ca    *CA
	order []uint16 // arrival order
	by    map[uint16]frost.Commitment
}

// maxCAsPerRequest bounds how many different CAs one request collects.
const maxCAsPerRequest = 4

// ErrNotEnoughSigners: fewer than K signers answered.
var ErrNotEnoughSigners = errors.New("tca: not enough signers answered")

// onCommitment records a signer's commitment for one of our requests.
func (s *Service) onCommitment(from pki.Identity, req []byte) error {
	m, err := decodeCommitment(req)
	if err != nil {
		s.stats.commitmentsRefused.Add(1)
		return err
	}
	s.mu.Lock()
	pr := s.requests[m.ReqID]
	s.mu.Unlock()
	if pr == nil {
		s.stats.commitmentsRefused.Add(1)
		return errors.New("tca: no such request")
	}
	ca, err := s.parseCA(m.CACert)
	if err != nil {
		s.stats.commitmentsRefused.Add(1)
		return err
	}
	if ca.TrustDomain.Name() != pr.td || (pr.pin != nil && !bytes.Equal(pr.pin, ca.GroupKey)) || ca.SignerID(from) != m.ID {
		s.stats.commitmentsRefused.Add(1)
		return errors.New("tca: commitment from a signer not of the CA requested")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if pr.skips[from] {
		return nil
	}
	fp := ca.Fingerprint()
	cc := pr.byCA[fp]
	if cc == nil {
		if len(pr.byCA) >= maxCAsPerRequest {
			s.stats.commitmentsRefused.Add(1)
			return errors.New("tca: too many CAs")
		}
		cc = &caCommits{ca: ca, by: map[uint16]frost.Commitment{}}
		pr.byCA[fp] = cc
	}
	if _, ok := cc.by[m.ID]; !ok {
		cc.by[m.ID] = frost.Commitment{ID: m.ID, Hiding: m.Hide, Binding: m.Bind}
		cc.order = append(cc.order, m.ID)
	}
	select {
	case pr.kick <- struct{}{}:
	default:
	}
	return nil
}

// RequestCertificate gets an X509-SVID for this node from the signers of
// cfg.TrustDomain (the reference's request_ca_certificate_from_mesh).
func (s *Service) RequestCertificate(ctx context.Context, cfg RequestConfig) (*Certificate, error) {
	sc := pki.SPIFFEConfig{TrustDomain: cfg.TrustDomain, Workload: cfg.Workload}
	if err := sc.Check(); err != nil {
		return nil, err
	}
	sid, err := sc.ID(s.self)
	if err != nil {
		return nil, err
	}
	if cfg.Validity <= 0 {
		cfg.Validity = time.Hour
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 4
	}
	if cfg.CAKey != nil && len(cfg.CAKey) != ed25519.PublicKeySize {
		return nil, errors.New("tca: CAKey must be a 32-byte Ed25519 key")
	}
	if cfg.CA != nil {
		if cfg.CA.TrustDomain.Name() != cfg.TrustDomain {
			return nil, fmt.Errorf("tca: the CA is of trust domain %s, the request for %s", cfg.CA.TrustDomain.Name(), cfg.TrustDomain)
		}
		if cfg.CAKey != nil && !bytes.Equal(cfg.CAKey, cfg.CA.GroupKey) {
			return nil, errors.New("tca: CAKey is not the key of CA")
		}
		cfg.CAKey = cfg.CA.GroupKey
	}
	if err := s.ensurePresenceSub(); err != nil {
		return nil, err
	}
	excluded := map[pki.Identity]string{}
	var lastErr error
	for attempt := 1; attempt <= cfg.Attempts; attempt++ {
		cert, err := s.requestOnce(ctx, cfg, sid, excluded)
		if err == nil {
			cert.Attempts, cert.Excluded = attempt, excluded
			return cert, nil
		}
		lastErr = err
		var retry *retryError
		if !errors.As(err, &retry) || ctx.Err() != nil {
			break
		}
		s.log.Info("signing round failed; retrying without the signers at fault", "attempt", attempt, "err", err)
	}
	return nil, lastErr
}

// retryError is a round that failed because of named signers.
type retryError struct{ msg string }

func (e *retryError) Error() string { return e.msg }

// backdate is how far before now a leaf's validity starts (clocks
// differ), at most a minute and an eighth of its lifetime; the lifetime
// (NotAfter - NotBefore) is the validity asked for.
func backdate(validity time.Duration) time.Duration { return min(time.Minute, validity/8) }

func (s *Service) requestOnce(ctx context.Context, cfg RequestConfig, sid spiffeid.ID, excluded map[pki.Identity]string) (*Certificate, error) {
	m := &csrMsg{SPIFFEID: sid.String(), Nonce: s.cfg.Keypair.Nonce()}
	rand.Read(m.ReqID[:])
	rand.Read(m.Serial[:])
	m.Serial[0] = m.Serial[0]&0x7f | 0x01
	nb := s.now().Add(-backdate(cfg.Validity)).Truncate(time.Second)
	m.NotBefore, m.NotAfter = uint64(nb.Unix()), uint64(nb.Add(cfg.Validity).Unix())
	pr := &pendingRequest{td: cfg.TrustDomain, pin: cfg.CAKey, byCA: map[[32]byte]*caCommits{}, kick: make(chan struct{}, 1), skips: map[pki.Identity]bool{},
		refused: map[pki.Identity]*refusalMsg{}, inflight: map[pki.Identity]bool{}, failed: map[pki.Identity]string{}}
	for id := range excluded {
		pr.skips[id] = true
	}
	s.mu.Lock()
	s.requests[m.ReqID] = pr
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.requests, m.ReqID)
		s.mu.Unlock()
	}()
	csr := m.encode()

	// Ask every signer we know of by RPC (their answers say who approved
	// us) and broadcast too (reaching signers we cannot dial, who answer
	// by RPC), until some CA has K commitments from signers not excluded,
	// or too many refused for K to be possible.
	wait := time.NewTimer(s.cfg.CommitWait)
	defer wait.Stop()
	tick := time.NewTicker(s.cfg.Republish)
	defer tick.Stop()
	var cc *caCommits
	publish := true
	for cc == nil {
		for _, id := range s.csrTargets(cfg) {
			s.askSigner(ctx, pr, id, m.ReqID, csr, publish)
		}
		if publish {
			if err := s.net.Publish(TopicCSR, csr); err != nil {
				s.log.Debug("publishing the CSR failed", "err", err)
			}
			publish = false
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.ctx.Done():
			return nil, errors.New("tca: closed")
		case <-wait.C:
			return nil, s.notEnough(pr, cfg, sid, excluded, true)
		case <-tick.C:
			publish = true
		case <-pr.kick:
		}
		var err error
		if cc, err = s.ready(pr); err != nil {
			return nil, err
		}
		if cc == nil && s.hopeless(pr, cfg) {
			return nil, s.notEnough(pr, cfg, sid, excluded, false)
		}
	}
	ca := cc.ca
	// The first K to answer sign.
	s.mu.Lock()
	chosen := append([]uint16(nil), cc.order[:ca.Threshold]...)
	var list []frost.Commitment
	for _, id := range chosen {
		list = append(list, cc.by[id])
	}
	s.mu.Unlock()
	frost.SortCommitments(list)
	p := leafParams{SPIFFEID: sid, Key: s.self, Serial: m.Serial, Nonce: m.Nonce, NotBefore: time.Unix(int64(m.NotBefore), 0).UTC(), NotAfter: time.Unix(int64(m.NotAfter), 0).UTC()}
	tbs, err := leafTBS(ca, p)
	if err != nil {
		return nil, err
	}
	req := (&signReqMsg{ReqID: m.ReqID, Commitments: list, TBS: tbs}).encode()
	shares := map[uint16]*edwards25519.Scalar{}
	failed := map[uint16]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
			defer cancel()
			resp, err := s.net.Call(cctx, ca.Signers[c.ID-1], req)
			var sh *signShareMsg
			if err == nil {
				sh, err = decodeSignShare(resp)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[c.ID] = err
				return
			}
			shares[c.ID] = sh.Z
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		var names []string
		for id, err := range failed {
			who := ca.Signers[id-1]
			excluded[who] = "did not answer the sign request: " + err.Error()
			names = append(names, who.Short())
		}
		sort.Strings(names)
		return nil, &retryError{fmt.Sprintf("tca: signers %s did not return a share", strings.Join(names, ", "))}
	}
	sig, err := frost.Aggregate(ca.group, ca.verifying, ca.Threshold, tbs, list, shares)
	if err != nil {
		var ce *frost.CulpritError
		if errors.As(err, &ce) && ce.ID >= 1 && int(ce.ID) <= len(ca.Signers) {
			who := ca.Signers[ce.ID-1]
			excluded[who] = "returned a signature share that does not verify"
			return nil, &retryError{fmt.Sprintf("tca: signer %s returned a bad signature share", who)}
		}
		return nil, err
	}
	der, err := assemble(leafTemplate(p), ca.Cert, s.self.PublicKey(), ca.GroupKey, tbs, sig)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	got, id, err := VerifyLeaf(leaf, ca, s.now())
	if err != nil || id != s.self {
		return nil, fmt.Errorf("tca: the signed certificate does not verify: %v", err)
	}
	out := &Certificate{DER: der, Leaf: leaf, CA: ca, SPIFFEID: got}
	for _, c := range list {
		out.Signers = append(out.Signers, ca.Signers[c.ID-1])
	}
	return out, nil
}

// csrTargets lists the signers to send the CSR to by RPC: the CA's when
// it is known, else those heard on ca/signers (and ourselves if we sign
// for the trust domain: gossip does not bring our own broadcast back).
func (s *Service) csrTargets(cfg RequestConfig) []pki.Identity {
	if cfg.CA != nil {
		return cfg.CA.Signers
	}
	out := s.knownSignersOf(cfg.TrustDomain)
	if st := s.SignerState(); st != nil && st.CA.TrustDomain.Name() == cfg.TrustDomain {
		out = append(out, s.self)
	}
	return out
}

// askSigner sends the CSR to signer id by RPC unless it answered, was
// excluded, or a call is in flight; a failed call is sent again only when
// retry is set (every Republish).
func (s *Service) askSigner(ctx context.Context, pr *pendingRequest, id pki.Identity, reqID [reqIDSize]byte, csr []byte, retry bool) {
	s.mu.Lock()
	_, failed := pr.failed[id]
	if pr.skips[id] || pr.inflight[id] || pr.refused[id] != nil || pr.committed(id) || (failed && !retry) {
		s.mu.Unlock()
		return
	}
	pr.inflight[id] = true
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
		resp, err := s.net.Call(cctx, id, csr)
		cancel()
		var ref *refusalMsg
		if err == nil {
			switch MessageType(resp) {
			case msgCommitment:
				err = s.onCommitment(id, resp)
			case msgRefusal:
				if ref, err = decodeRefusal(resp); err == nil && ref.ReqID != reqID {
					ref, err = nil, errors.New("a refusal of another request")
				}
			default:
				err = errors.New("an answer that is neither a commitment nor a refusal")
			}
		}
		s.mu.Lock()
		delete(pr.inflight, id)
		switch {
		case ref != nil:
			pr.refused[id] = ref
		case err != nil:
			pr.failed[id] = err.Error()
		default:
			delete(pr.failed, id)
		}
		s.mu.Unlock()
		select {
		case pr.kick <- struct{}{}:
		default:
		}
	}()
}

// committed reports whether id gave a commitment (s.mu held).
func (pr *pendingRequest) committed(id pki.Identity) bool {
	for _, cc := range pr.byCA {
		if n := cc.ca.SignerID(id); n != 0 && cc.by[n].Hiding != nil {
			return true
		}
	}
	return false
}

// theCA is the CA a request is for when it is known: the configured one,
// else the only one that answered (s.mu held).
func (pr *pendingRequest) theCA(cfg RequestConfig) *CA {
	if cfg.CA != nil {
		return cfg.CA
	}
	if len(pr.byCA) == 1 {
		for _, cc := range pr.byCA {
			return cc.ca
		}
	}
	return nil
}

// hopeless reports whether so many of the CA's signers refused (or were
// excluded) that K commitments can no longer come, once no call is in
// flight (so the error counts every answer).
func (s *Service) hopeless(pr *pendingRequest, cfg RequestConfig) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ca := pr.theCA(cfg)
	if ca == nil || len(pr.inflight) > 0 {
		return false
	}
	out := 0
	for _, id := range ca.Signers {
		if pr.refused[id] != nil || pr.skips[id] {
			out++
		}
	}
	return len(ca.Signers)-out < ca.Threshold
}

// ready returns the CA whose signers have given K commitments, refusing
// to choose between two CAs of the trust domain without a pin.
func (s *Service) ready(pr *pendingRequest) (*caCommits, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(pr.byCA) > 1 && pr.pin == nil {
		var keys []string
		for _, cc := range pr.byCA {
			keys = append(keys, fmt.Sprintf("%x", cc.ca.GroupKey))
		}
		sort.Strings(keys)
		return nil, fmt.Errorf("tca: %d different CAs answer for trust domain %s (keys %s): pin one with its CA key", len(keys), pr.td, strings.Join(keys, ", "))
	}
	for _, cc := range pr.byCA {
		if len(cc.order) >= cc.ca.Threshold {
			return cc, nil
		}
	}
	return nil, nil
}

// notEnough explains a round in which fewer than K signers gave a
// commitment: how many approved the request, who refused and why, who was
// silent. timedOut says whether CommitWait passed (else refusals made K
// impossible). It wraps ErrNotApproved when a signer said it has not
// approved the identity, else ErrNotEnoughSigners.
func (s *Service) notEnough(pr *pendingRequest, cfg RequestConfig, sid spiffeid.ID, excluded map[pki.Identity]string, timedOut bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	ca := pr.theCA(cfg)
	sentinel := ErrNotEnoughSigners
	byReason := map[byte][]string{}
	var texts []string
	for id, r := range pr.refused {
		byReason[r.Reason] = append(byReason[r.Reason], id.Short())
		if r.Reason == refuseNotApproved {
			sentinel = ErrNotApproved
		} else if len(texts) < 3 {
			texts = append(texts, id.Short()+": "+r.Text)
		}
	}
	switch {
	case ca != nil:
		got := 0
		if cc := pr.byCA[ca.Fingerprint()]; cc != nil {
			got = len(cc.order)
		}
		verb := "answered"
		if len(pr.refused) > 0 {
			verb = "approved"
		}
		fmt.Fprintf(&b, "%d of the %d signers needed (of %d) %s %s", got, ca.Threshold, len(ca.Signers), verb, sid)
		if timedOut {
			fmt.Fprintf(&b, " within %v", s.cfg.CommitWait)
		}
		var quiet []string
		for i, id := range ca.Signers {
			cc := pr.byCA[ca.Fingerprint()]
			if (cc == nil || cc.by[uint16(i+1)].Hiding == nil) && pr.refused[id] == nil && !pr.skips[id] {
				q := id.Short()
				if why := pr.failed[id]; why != "" {
					q += " (" + clipText(why) + ")"
				}
				quiet = append(quiet, q)
			}
		}
		if len(quiet) > 0 {
			fmt.Fprintf(&b, "; silent: %s", strings.Join(quiet, ", "))
		}
	case len(pr.byCA) == 0 && len(pr.refused) == 0:
		fmt.Fprintf(&b, "no signer of trust domain %s answered within %v (is a signer running and connected to this node's mesh?)", cfg.TrustDomain, s.cfg.CommitWait)
	default:
		for _, cc := range pr.byCA {
			fmt.Fprintf(&b, "%d of the %d signers needed (of %d) answered within %v; ", len(cc.order), cc.ca.Threshold, len(cc.ca.Signers), s.cfg.CommitWait)
		}
	}
	names := map[byte]string{refuseNotApproved: "not approved by", refuseRateLimited: "rate-limited by", refuseBusy: "busy", refuseInvalid: "refused as invalid by", refuseNotSigner: "not signers"}
	for _, r := range []byte{refuseNotApproved, refuseRateLimited, refuseBusy, refuseInvalid, refuseNotSigner} {
		if ids := byReason[r]; len(ids) > 0 {
			sort.Strings(ids)
			fmt.Fprintf(&b, "; %s %s", names[r], strings.Join(ids, ", "))
		}
	}
	if len(texts) > 0 {
		sort.Strings(texts)
		fmt.Fprintf(&b, " (%s)", strings.Join(texts, "; "))
	}
	for id, why := range excluded {
		fmt.Fprintf(&b, "; excluded %s: %s", id.Short(), why)
	}
	if sentinel == ErrNotApproved {
		fmt.Fprintf(&b, " (each of %s's signers approves with `korium-tun ca approve %s`)", cfg.TrustDomain, s.self)
	}
	return fmt.Errorf("%w: %s", sentinel, b.String())
}
