// Package control is the local control socket of a running node: a Unix
// socket, accessible to root only, that answers one JSON request per
// connection. `korium-tun status` and later commands read the node through
// it. It imports nothing of this project.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultPath is where `korium-tun up` listens by default.
const DefaultPath = "/run/korium-tun/control.sock"

// maxRequest bounds a request line.
const maxRequest = 64 << 10

// maxResponse bounds what a client reads for one response: Call's whole
// answer, and each line of a Stream.
const maxResponse = 64 << 20

// Request is one command.
type Request struct {
	Cmd  string          `json:"cmd"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Response carries a result or an error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Handler answers one command.
type Handler func(ctx context.Context, args json.RawMessage) (any, error)

// StreamHandler answers one command with a stream of results: it calls emit
// for each, until ctx ends (the client went away or the server closes) or
// it returns. emit fails once the client is gone.
type StreamHandler func(ctx context.Context, args json.RawMessage, emit func(any) error) error

// Server serves a control socket.
type Server struct {
	ln       net.Listener
	path     string
	handlers map[string]Handler
	streamMu sync.RWMutex // guards streams
	streams  map[string]StreamHandler
	log      *slog.Logger
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
}

// Listen creates the socket at path (its directory with mode 0700, the
// socket 0600). A stale socket left by a dead node is replaced; a live one
// is an error.
func Listen(path string, handlers map[string]Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("cannot create control socket directory %s: %v", filepath.Dir(path), err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use: another korium-tun is running (stop it, or pass --control with another path)", path)
	}
	os.Remove(path)
	old := umask(0o177)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("cannot create control socket %s: %v", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{ln: ln, path: path, handlers: handlers, streams: map[string]StreamHandler{}, log: log}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// HandleStream registers a streaming command.
func (s *Server) HandleStream(cmd string, h StreamHandler) {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	s.streams[cmd] = h
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *Server) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, maxRequest+1)).ReadBytes('\n')
	var resp Response
	var req Request
	switch {
	case len(line) > maxRequest:
		resp.Error = "request too large"
	case err != nil:
		resp.Error = "request must be one JSON line"
	case json.Unmarshal(line, &req) != nil:
		resp.Error = "request is not JSON"
	default:
		s.streamMu.RLock()
		sh := s.streams[req.Cmd]
		s.streamMu.RUnlock()
		if sh != nil {
			s.stream(c, sh, req.Args)
			return
		}
		h := s.handlers[req.Cmd]
		if h == nil {
			resp.Error = fmt.Sprintf("unknown command %q", req.Cmd)
			break
		}
		ctx, cancel := context.WithTimeout(s.ctx, 25*time.Second)
		out, err := h(ctx, req.Args)
		cancel()
		if err != nil {
			resp.Error = err.Error()
			break
		}
		if resp.Result, err = json.Marshal(out); err != nil {
			resp.Error = err.Error()
		}
	}
	json.NewEncoder(c).Encode(resp)
}

// stream runs a streaming command: one JSON response line per result, a
// final line carrying the handler's error if any. The stream ends when the
// client closes its side.
func (s *Server) stream(c net.Conn, h StreamHandler, args json.RawMessage) {
	c.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() { // the client has nothing more to say: EOF means it left
		io.Copy(io.Discard, io.LimitReader(c, 1))
		cancel()
	}()
	enc := json.NewEncoder(c)
	var mu sync.Mutex
	emit := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return enc.Encode(Response{Result: b})
	}
	if err := h(ctx, args, emit); err != nil && ctx.Err() == nil {
		mu.Lock()
		enc.Encode(Response{Error: err.Error()})
		mu.Unlock()
	}
}

// Stream sends one streaming request to the node at path and calls f with
// each result until the stream ends, f returns an error, or ctx ends.
func Stream(ctx context.Context, path, cmd string, args any, f func(json.RawMessage) error) error {
	c, err := send(ctx, path, cmd, args)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() }) // unblocks Decode
	defer stop()
	sc := bufio.NewScanner(c) // one response per line, each bounded
	sc.Buffer(nil, maxResponse)
	for sc.Scan() {
		var resp Response
		if err := json.Unmarshal(sc.Bytes(), &resp); err != nil {
			return fmt.Errorf("reading control stream: %v", err)
		}
		if resp.Error != "" {
			return errors.New(resp.Error)
		}
		if err := f(resp.Result); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading control stream: %v", err)
	}
	return nil
}

// send dials the node at path and writes one request.
func send(ctx context.Context, path, cmd string, args any) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("cannot open control socket %s: permission denied (run with sudo)", path)
		}
		return nil, fmt.Errorf("no running node at control socket %s (is `korium-tun up` running? pass --control PATH if it uses another): %v", path, errors.Unwrap(err))
	}
	req := Request{Cmd: cmd}
	if args != nil {
		if req.Args, err = json.Marshal(args); err != nil {
			c.Close()
			return nil, err
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetWriteDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		c.Close()
		return nil, err
	}
	c.SetWriteDeadline(time.Time{})
	return c, nil
}

// Close stops serving, removes the socket and waits for requests in flight.
func (s *Server) Close() error {
	s.cancel()
	err := s.ln.Close()
	s.wg.Wait()
	os.Remove(s.path)
	return err
}

// Call sends one request to the node at path and decodes its result into out.
func Call(ctx context.Context, path, cmd string, args, out any) error {
	c, err := send(ctx, path, cmd, args)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var resp Response
	if err := json.NewDecoder(io.LimitReader(c, maxResponse)).Decode(&resp); err != nil {
		return fmt.Errorf("reading control response: %v", err)
	}
	if resp.Error != "" {
		return errors.New(resp.Error)
	}
	if out != nil {
		return json.Unmarshal(resp.Result, out)
	}
	return nil
}
