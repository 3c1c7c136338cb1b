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
	// MaxMessageSize caps requests and responses (default and upper bound
	// MaxMessageSize, 1 MiB).
	MaxMessageSize int
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
	return c
}

// Stats counts what a Server did, by outcome.
type Stats struct {
	Requests      uint64 `json:"requests"`       // well-formed requests given to a handler
	Responses     uint64 `json:"responses"`      // OK responses sent
	Refused       uint64 `json:"refused"`        // unknown protocol, no handler, or refused by the handler
	TooLarge      uint64 `json:"too_large"`      // requests or responses above the limit
	HandlerErrors uint64 `json:"handler_errors"` // handler returned an error
	Timeouts      uint64 `json:"timeouts"`       // handler ran past HandlerTimeout
	StreamErrors  uint64 `json:"stream_errors"`  // stalled or malformed requests, failed writes
	Abandoned     uint64 `json:"abandoned"`      // the caller gave up before the answer
	Active        int64  `json:"active"`         // handlers running now
}

type counters struct {
	requests, responses, refused, tooLarge, handlerErrors, timeouts, streamErrors, abandoned atomic.Uint64
	active                                                                                   atomic.Int64
}

// Server dispatches requests arriving on QUIC connections to handlers by
// protocol ID. One Server serves any number of connections; Serve runs once
// per connection.
type Server struct {
	cfg Config

	mu       sync.RWMutex // guards handlers
	handlers [256]Handler

	stats counters
}

// NewServer returns a server with no handlers.
func NewServer(cfg Config) *Server {
	return &Server{cfg: cfg.withDefaults()}
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
	return Stats{
		Requests:      c.requests.Load(),
		Responses:     c.responses.Load(),
		Refused:       c.refused.Load(),
		TooLarge:      c.tooLarge.Load(),
		HandlerErrors: c.handlerErrors.Load(),
		Timeouts:      c.timeouts.Load(),
		StreamErrors:  c.streamErrors.Load(),
		Abandoned:     c.abandoned.Load(),
		Active:        c.active.Load(),
	}
}

// Serve accepts request streams on conn, whose peer is from, until conn
// closes or ctx ends. It returns after every handler it started has
// returned, with the error that ended the accept loop.
func (s *Server) Serve(ctx context.Context, conn *quic.Conn, from pki.Identity) error {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(conn.Context(), cancel)
	var wg sync.WaitGroup
	defer func() {
		stop()
		cancel()
		wg.Wait()
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
			s.serveStream(ctx, str, from, slots, &wg)
		}()
	}
}

// serveStream handles one request stream. It frees its slot when done,
// unless a handler still runs: then the handler frees it on return, so a
// handler that overruns its timeout keeps counting against MaxConcurrent.
func (s *Server) serveStream(ctx context.Context, str *quic.Stream, from pki.Identity, slots chan struct{}, wg *sync.WaitGroup) {
	release := true
	defer func() {
		str.ReleaseStreamCredit()
		if release {
			<-slots
		}
	}()
	str.SetReadDeadline(time.Now().Add(s.cfg.StreamTimeout))
	proto, req, err := ReadRequest(str, s.cfg.MaxMessageSize)
	if err == nil {
		err = expectEOF(str) // the caller closes its side after the frame
	}
	switch {
	case errors.Is(err, errUnknownProto):
		s.stats.refused.Add(1)
		str.CancelRead(codeRefused)
		s.reply(str, StatusRefused, []byte(fmt.Sprintf("unknown protocol ID %d", proto)))
		return
	case errors.Is(err, errFrameTooLarge):
		s.stats.tooLarge.Add(1)
		str.CancelRead(codeRefused)
		s.reply(str, StatusTooLarge, []byte(fmt.Sprintf("request above %d bytes", s.cfg.MaxMessageSize)))
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
	s.stats.requests.Add(1)

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
	case r.err == nil && len(r.resp) > s.cfg.MaxMessageSize:
		s.stats.tooLarge.Add(1)
		s.reply(str, StatusTooLarge, []byte(fmt.Sprintf("response of %d bytes above %d", len(r.resp), s.cfg.MaxMessageSize)))
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
