package rpc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
)

// Stream error codes used when a stream is reset instead of answered.
const (
	codeStalled   quic.StreamErrorCode = 1 // the request did not arrive within StreamTimeout
	codeMalformed quic.StreamErrorCode = 2 // the request frame was malformed
	codeCancelled quic.StreamErrorCode = 3 // the caller gave up
	codeRefused   quic.StreamErrorCode = 4 // sent with STOP_SENDING when the rest of a request is unwanted
	codeBusy      quic.StreamErrorCode = 5 // STOP_SENDING: the request would exceed a buffer budget
)

// Handler answers one request. ctx ends at the handler timeout or when the
// connection closes; a handler must return soon after. Returning an error
// made by RefuseError answers StatusRefused; any other error answers
// StatusHandlerError with its text (cut to MaxErrorText bytes).
type Handler func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error)

// Config tunes a Server. The zero value means the defaults written on each
// field.
type Config struct {
	// HandlerTimeout bounds one handler call (default 10 s). The caller
	// gets StatusTimeout when it passes.
	HandlerTimeout time.Duration
	// StreamTimeout bounds receiving a whole request, and separately
	// sending the response (default 10 s). A peer that stalls mid-frame has
	// its stream reset when it passes.
	StreamTimeout time.Duration
	// MaxConcurrent caps handlers running at once per connection
	// (default 64, the reference's MAX_CONCURRENT_STREAMS).
	MaxConcurrent int
	// MaxMessageSize caps requests and responses of every protocol
	// (default and upper bound MaxMessageSize, 1 MiB).
	MaxMessageSize int
	// MaxSize caps one protocol's requests and responses, by protocol ID
	// (default and upper bound MaxMessageSize). The overlay sets each to its
	// protocol's real maximum. A request whose length prefix is above it is
	// answered StatusTooLarge before anything is allocated; a response
	// above it is not sent, nor read by Server.Call.
	MaxSize Sizes
	// PeerBudget caps the request bytes buffered at once while they arrive
	// from one peer, over all its streams and connections (default
	// DefaultPeerBudget, 4 MiB; at least the largest MaxSize). A stream whose
	// buffer would grow past it is reset and answered StatusRefused.
	PeerBudget int
	// NodeBudget caps them over all peers (default DefaultNodeBudget,
	// 32 MiB; at least PeerBudget). When it is full, a peer holding less
	// than another may take from it: the other's largest stream is reset.
	NodeBudget int
}

func (c Config) withDefaults() Config {
	if c.HandlerTimeout <= 0 {
		c.HandlerTimeout = 10 * time.Second
	}
	if c.StreamTimeout <= 0 {
		c.StreamTimeout = 10 * time.Second
	}
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 64
	}
	if c.MaxMessageSize <= 0 || c.MaxMessageSize > MaxMessageSize {
		c.MaxMessageSize = MaxMessageSize
	}
	largest := 0
	for i := range c.MaxSize {
		if c.MaxSize[i] <= 0 || c.MaxSize[i] > c.MaxMessageSize {
			c.MaxSize[i] = c.MaxMessageSize
		}
		if KnownProto(byte(i)) {
			largest = max(largest, c.MaxSize[i])
		}
	}
	if c.PeerBudget <= 0 {
		c.PeerBudget = DefaultPeerBudget
	}
	c.PeerBudget = max(c.PeerBudget, largest)
	if c.NodeBudget <= 0 {
		c.NodeBudget = DefaultNodeBudget
	}
	c.NodeBudget = max(c.NodeBudget, c.PeerBudget)
	return c
}

// Stats counts what a Server did, by outcome.
type Stats struct {
	Requests uint64 `json:"requests"` // well-formed requests given to a handler: the sum of ByProto
	// ByProto is Requests by protocol ID (the index; 0 unused): what an
	// idle node's requests are (DHT maintenance, gossip, configure_nat).
	ByProto       [ProtoCA + 1]uint64 `json:"by_proto"`
	Responses     uint64              `json:"responses"`      // OK responses sent
	Refused       uint64              `json:"refused"`        // unknown protocol, no handler, or refused by the handler
	TooLarge      uint64              `json:"too_large"`      // requests or responses above the limit
	HandlerErrors uint64              `json:"handler_errors"` // handler returned an error
	Timeouts      uint64              `json:"timeouts"`       // handler ran past HandlerTimeout
	StreamErrors  uint64              `json:"stream_errors"`  // stalled or malformed requests, failed writes
	Abandoned     uint64              `json:"abandoned"`      // the caller gave up before the answer
	// Streams reset because their request would buffer too much, by
	// budget: the peer's, the node's, or taken by a peer holding less.
	OverPeerBudget uint64 `json:"over_peer_budget"`
	OverNodeBudget uint64 `json:"over_node_budget"`
	Preempted      uint64 `json:"budget_preempted"`
	Active         int64  `json:"active"`         // handlers running now
	Buffered       int64  `json:"buffered_bytes"` // request bytes buffered now, arriving
}

type counters struct {
	responses, refused, tooLarge, handlerErrors, timeouts, streamErrors, abandoned atomic.Uint64
	overPeer, overNode, preempted                                                  atomic.Uint64
	active                                                                         atomic.Int64
	requests                                                                       [ProtoCA + 1]atomic.Uint64 // by protocol ID
}

// Server dispatches requests arriving on QUIC connections to handlers by
// protocol ID. One Server serves any number of connections; Serve runs once
// per connection.
type Server struct {
	cfg Config

	mu       sync.RWMutex // guards handlers
	handlers [256]Handler

	budget *budget
	stats  counters
}

// NewServer returns a server with no handlers.
func NewServer(cfg Config) *Server {
	c := cfg.withDefaults()
	return &Server{cfg: c, budget: newBudget(c.PeerBudget, c.NodeBudget)}
}

// Call is the package's Call with the server's caps for proto: a request
// above MaxSize[proto] is refused before it is sent, and a response above
// it after its length prefix. The node's one Server serves and calls.
func (s *Server) Call(ctx context.Context, conn *quic.Conn, proto byte, req []byte) ([]byte, error) {
	return call(ctx, conn, proto, req, s.cfg.MaxSize.Max(proto))
}

// Handle sets the handler for proto (nil removes it). It panics on a
// protocol ID outside the known ones: that is a programming error.
func (s *Server) Handle(proto byte, h Handler) {
	if !KnownProto(proto) {
		panic(fmt.Sprintf("rpc: Handle with unknown protocol ID %d", proto))
	}
	s.mu.Lock()
	s.handlers[proto] = h
	s.mu.Unlock()
}

func (s *Server) handler(proto byte) Handler {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.handlers[proto]
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	var by [ProtoCA + 1]uint64
	var all uint64
	for i := range c.requests {
		by[i] = c.requests[i].Load()
		all += by[i]
	}
	return Stats{
		Requests:       all,
		ByProto:        by,
		Responses:      c.responses.Load(),
		Refused:        c.refused.Load(),
		TooLarge:       c.tooLarge.Load(),
		HandlerErrors:  c.handlerErrors.Load(),
		Timeouts:       c.timeouts.Load(),
		StreamErrors:   c.streamErrors.Load(),
		Abandoned:      c.abandoned.Load(),
		OverPeerBudget: c.overPeer.Load(),
		OverNodeBudget: c.overNode.Load(),
		Preempted:      c.preempted.Load(),
		Active:         c.active.Load(),
		Buffered:       int64(s.budget.buffered()),
	}
}

// Serve accepts request streams on conn, whose peer is from, until conn
// closes or ctx ends. It returns after every handler it started has
// returned, with the error that ended the accept loop.
func (s *Server) Serve(ctx context.Context, conn *quic.Conn, from pki.Identity) error {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(conn.Context(), cancel)
	acct := s.budget.join(from)
	var wg sync.WaitGroup
	defer func() {
		stop()
		cancel()
		wg.Wait()
		s.budget.leave(acct)
	}()
	// A slot is taken before a stream is accepted, so while MaxConcurrent
	// handlers run, further streams stay unaccepted and count against the
	// peer's stream limit.
	slots := make(chan struct{}, s.cfg.MaxConcurrent)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveStream(ctx, str, from, acct, slots, &wg)
		}()
	}
}

// serveStream handles one request stream. It frees its slot when done,
// unless a handler still runs: then the handler frees it on return, so a
// handler that overruns its timeout keeps counting against MaxConcurrent.
func (s *Server) serveStream(ctx context.Context, str *quic.Stream, from pki.Identity, acct *account, slots chan struct{}, wg *sync.WaitGroup) {
	release := true
	defer func() {
		str.ReleaseStreamCredit()
		if release {
			<-slots
		}
	}()
	str.SetReadDeadline(time.Now().Add(s.cfg.StreamTimeout))
	res := s.budget.forStream(acct, str)
	proto, req, err := readRequest(str, &s.cfg.MaxSize, res)
	if err == nil {
		err = expectEOF(str) // the caller closes its side after the frame
	}
	// The request is read: its bytes belong to the handler from here on,
	// bounded by MaxConcurrent and HandlerTimeout rather than the budget.
	if res.release() {
		err = errPreempted
	}
	switch {
	case errors.Is(err, errOverPeerBudget), errors.Is(err, errOverNodeBudget), errors.Is(err, errPreempted):
		why := "this peer's requests in flight hold all of its budget"
		switch {
		case errors.Is(err, errOverPeerBudget):
			s.stats.overPeer.Add(1)
		case errors.Is(err, errOverNodeBudget):
			s.stats.overNode.Add(1)
			why = "the node's budget for requests in flight is used up"
		default:
			s.stats.preempted.Add(1)
			why = "this request's buffer was taken by a peer holding less"
		}
		str.CancelRead(codeBusy)
		s.reply(str, StatusRefused, []byte("request buffers full: "+why+"; retry later"))
		return
	case errors.Is(err, errUnknownProto):
		s.stats.refused.Add(1)
		str.CancelRead(codeRefused)
		s.reply(str, StatusRefused, []byte(fmt.Sprintf("unknown protocol ID %d", proto)))
		return
	case errors.Is(err, errFrameTooLarge):
		s.stats.tooLarge.Add(1)
		str.CancelRead(codeRefused)
		s.reply(str, StatusTooLarge, []byte(fmt.Sprintf("request above %d bytes", s.cfg.MaxSize.Max(proto))))
		return
	case err != nil:
		// Stalled (read deadline), truncated, reset or malformed: there is
		// nobody sensible to answer.
		s.stats.streamErrors.Add(1)
		code := codeMalformed
		if isTimeout(err) {
			code = codeStalled
		}
		str.CancelRead(code)
		str.CancelWrite(code)
		return
	}
	h := s.handler(proto)
	if h == nil {
		s.stats.refused.Add(1)
		s.reply(str, StatusRefused, []byte(fmt.Sprintf("protocol %d not served", proto)))
		return
	}
	s.stats.requests[proto].Add(1) // KnownProto: in range

	type result struct {
		resp []byte
		err  error
	}
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandlerTimeout)
	defer cancel()
	// A caller that gives up cancels its stream (STOP_SENDING), which ends
	// the stream's context: the handler need not work on for nobody.
	stopWatch := context.AfterFunc(str.Context(), cancel)
	defer stopWatch()
	done := make(chan result, 1)
	release = false
	s.stats.active.Add(1)
	wg.Add(1)
	go func() {
		defer func() {
			s.stats.active.Add(-1)
			<-slots
			wg.Done()
		}()
		resp, err := h(hctx, from, req)
		done <- result{resp, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-hctx.Done():
		// Prefer an answer that arrived at the same moment.
		select {
		case r = <-done:
		default:
			r.err = hctx.Err()
		}
	}
	switch {
	case str.Context().Err() != nil:
		// The caller gave up (or the connection closed): nobody to answer.
		s.stats.abandoned.Add(1)
		str.CancelWrite(codeCancelled)
	case r.err == nil && len(r.resp) > s.cfg.MaxSize.Max(proto):
		s.stats.tooLarge.Add(1)
		s.reply(str, StatusTooLarge, []byte(fmt.Sprintf("response of %d bytes above %d", len(r.resp), s.cfg.MaxSize.Max(proto))))
	case r.err == nil:
		if s.reply(str, StatusOK, r.resp) {
			s.stats.responses.Add(1)
		}
	case errors.Is(r.err, ErrRefused):
		s.stats.refused.Add(1)
		s.reply(str, StatusRefused, errText(r.err))
	case hctx.Err() != nil && errors.Is(r.err, context.DeadlineExceeded):
		s.stats.timeouts.Add(1)
		s.reply(str, StatusTimeout, []byte(fmt.Sprintf("handler did not answer within %v", s.cfg.HandlerTimeout)))
	default:
		s.stats.handlerErrors.Add(1)
		s.reply(str, StatusHandlerError, errText(r.err))
	}
}

// reply writes one response and closes the stream's send side.
func (s *Server) reply(str *quic.Stream, st Status, payload []byte) bool {
	str.SetWriteDeadline(time.Now().Add(s.cfg.StreamTimeout))
	if _, err := str.Write(appendHeader(nil, byte(st), len(payload))); err == nil {
		_, err = str.Write(payload)
		if err == nil {
			str.Close()
			return true
		}
	}
	s.stats.streamErrors.Add(1)
	str.CancelWrite(codeMalformed)
	return false
}

func errText(err error) []byte {
	var e *Error
	t := err.Error()
	if errors.As(err, &e) && e.Detail != "" {
		t = e.Detail
	}
	if len(t) > MaxErrorText {
		t = t[:MaxErrorText]
	}
	return []byte(t)
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
