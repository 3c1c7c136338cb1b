package tca

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/korium/korium-tun/pki"
)

// DKGResult is what RunDKG returns.
type DKGResult struct {
	State    *SignerState
	Elapsed  time.Duration
	Messages DKGMessages
}

// DKGMessages counts what one signer sent in a ceremony.
type DKGMessages struct {
	Round1Published int // round-1 broadcasts (republished until every signer answered)
	SharesSent      int // round-2 RPCs (including retries)
	CASharesSent    int // CA-signature-share RPCs (including retries)
}

// RunDKG runs the key-generation ceremony with the other signers of cfg
// and returns this node's signer state (not yet saved, not yet signing:
// see SaveState and Config.Signer). Every signer runs it with the same
// parameters, in any order, within ctx's deadline. Round 1 is broadcast on
// ca/dkg/round1 until every other signer has answered round 2; round-2
// shares and CA signature shares go by RPC and are retried until
// acknowledged, so RunDKG returns only once every other signer has what it
// needs from us.
func (s *Service) RunDKG(ctx context.Context, cfg DKGConfig) (*DKGResult, error) {
	start := s.now()
	run, err := newDKGRun(cfg, s.self, s.now)
	if err != nil {
		return nil, err
	}
	kick := make(chan struct{}, 1)
	s.mu.Lock()
	if s.dkg != nil && s.dkg.result == nil && s.dkg.err == nil && s.dkgKick != nil {
		s.mu.Unlock()
		return nil, errors.New("tca: a DKG is already running on this node")
	}
	s.dkg, s.dkgKick = run, kick
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.dkg == run {
			s.dkgKick = nil // keep the run to acknowledge late retransmissions
		}
		s.mu.Unlock()
	}()
	cancelSub, err := s.net.Subscribe(TopicRound1, s.onRound1)
	if err != nil {
		return nil, fmt.Errorf("tca: subscribing to %s: %w", TopicRound1, err)
	}
	defer cancelSub()
	s.log.Info("DKG started", "session", run.sessionHex(), "signers", run.n, "threshold", run.t, "us", run.myID)

	var (
		wg      sync.WaitGroup
		sendMu  sync.Mutex // guards acked, busy and msgs
		acked   = map[string]bool{}
		busy    = map[string]bool{}
		msgs    DKGMessages
		rctx, c = context.WithCancel(ctx)
	)
	defer func() { c(); wg.Wait() }()
	send := func(key string, to pki.Identity, data []byte, count *int) {
		sendMu.Lock()
		if acked[key] || busy[key] {
			sendMu.Unlock()
			return
		}
		busy[key] = true
		*count++
		sendMu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(rctx, s.cfg.CallTimeout)
			_, err := s.net.Call(cctx, to, data)
			cancel()
			sendMu.Lock()
			busy[key] = false
			if err == nil {
				acked[key] = true
			}
			sendMu.Unlock()
			if err == nil {
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		}()
	}
	// Connect to every signer first: gossip reaches subscribers only
	// through subscribers, and the signers are the subscribers.
	for _, id := range run.signers {
		if id != s.self {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(rctx, s.cfg.CallTimeout)
				defer cancel()
				s.net.Connect(cctx, id)
			}()
		}
	}
	tick := time.NewTicker(s.cfg.Republish)
	defer tick.Stop()
	lastPublish := time.Time{}
	for {
		s.mu.Lock()
		runErr, result := run.err, run.result
		needR1 := len(run.r2) < run.n-1
		out2, caOut := run.out2, run.caOut
		missing := run.missing()
		s.mu.Unlock()
		if runErr != nil {
			return nil, runErr
		}
		if needR1 && s.now().Sub(lastPublish) >= s.cfg.Republish {
			if err := s.net.Publish(TopicRound1, run.own); err == nil {
				lastPublish = s.now()
				msgs.Round1Published++
			}
		}
		sendMu.Lock()
		allAcked := caOut != nil
		for _, id := range run.signers {
			if id != s.self && (!acked["r2/"+id.String()] || !acked["ca/"+id.String()]) {
				allAcked = false
			}
		}
		sendMu.Unlock()
		for i, id := range run.signers {
			if id == s.self || out2 == nil {
				continue
			}
			send("r2/"+id.String(), id, out2[uint16(i+1)], &msgs.SharesSent)
			if caOut != nil {
				send("ca/"+id.String(), id, caOut, &msgs.CASharesSent)
			}
		}
		if result != nil && allAcked {
			sendMu.Lock()
			m := msgs
			sendMu.Unlock()
			s.log.Info("DKG done", "session", run.sessionHex(), "ca_key", fmt.Sprintf("%x", result.CA.GroupKey), "elapsed", s.now().Sub(start))
			return &DKGResult{State: result, Elapsed: s.now().Sub(start), Messages: m}, nil
		}
		select {
		case <-ctx.Done():
			s.mu.Lock()
			if s.dkg == run && run.err == nil && run.result == nil {
				run.fail(errors.New("timed out"))
			}
			s.mu.Unlock()
			if len(missing) > 0 {
				return nil, fmt.Errorf("tca: DKG timed out waiting for %s", strings.Join(missing, "; "))
			}
			return nil, fmt.Errorf("tca: DKG timed out before every signer acknowledged our messages: %w", ctx.Err())
		case <-s.ctx.Done():
			return nil, errors.New("tca: closed")
		case <-tick.C:
		case <-kick:
		}
	}
}

// missing says whom the run still waits for, for a timeout's message.
func (r *dkgRun) missing() []string {
	var out []string
	list := func(what string, have func(uint16) bool) {
		var ids []string
		for i, s := range r.signers {
			if !have(uint16(i + 1)) {
				ids = append(ids, s.Short())
			}
		}
		if len(ids) > 0 {
			sort.Strings(ids)
			out = append(out, what+" from "+strings.Join(ids, ", "))
		}
	}
	list("round 1", func(id uint16) bool { return r.r1[id] != nil })
	list("round 2", func(id uint16) bool { return id == r.myID || r.r2[id] != nil })
	if r.key != nil {
		list("CA signature shares", func(id uint16) bool { return r.caShares[id] != nil })
	}
	return out
}

// onRound1 feeds a round-1 broadcast to the running ceremony.
func (s *Service) onRound1(from pki.Identity, data []byte) {
	if from == s.self {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	run := s.dkg
	if run == nil || MessageType(data) != msgRound1 {
		s.stats.dkgRefused.Add(1)
		return
	}
	if sess, ok := dkgSessionOf(data); !ok || sess != run.session {
		s.stats.dkgRefused.Add(1)
		return
	}
	if err := run.onRound1(from, data); err != nil {
		var ae *AbortError
		if !errors.As(err, &ae) {
			s.stats.dkgRefused.Add(1)
		}
	}
	s.kickLocked()
}

// onDKGMessage takes a round-2 share or CA share by RPC; an error makes
// the sender retry (no ceremony yet) or names what was wrong.
func (s *Service) onDKGMessage(from pki.Identity, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	run := s.dkg
	sess, ok := dkgSessionOf(data)
	if run == nil || !ok || sess != run.session {
		s.stats.dkgRefused.Add(1)
		return errors.New("tca: no DKG with this session runs here (yet)")
	}
	var err error
	if MessageType(data) == msgDKGShare {
		err = run.onDKGShare(from, data)
	} else {
		err = run.onCAShare(from, data)
	}
	if err != nil {
		s.stats.dkgRefused.Add(1)
		return err
	}
	s.kickLocked()
	return nil
}

func (s *Service) kickLocked() {
	if s.dkgKick != nil {
		select {
		case s.dkgKick <- struct{}{}:
		default:
		}
	}
}

// SetSigner makes the Service a signer with st (after a DKG, or to load a
// state later) and the approval list at approvalsFile ("" keeps it in
// memory only). It fails if it is a signer already.
func (s *Service) SetSigner(st *SignerState, approvalsFile string) error {
	if st.Identity != s.self {
		return fmt.Errorf("tca: the signer state belongs to %s", st.Identity.Short())
	}
	if err := st.check(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.signer != nil {
		s.mu.Unlock()
		return errors.New("tca: this node is a signer already")
	}
	s.mu.Unlock()
	return s.startSigner(st, approvalsFile)
}
