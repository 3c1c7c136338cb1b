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
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
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
	sock     fs.FileInfo // our socket file: Close removes only that
	handlers map[string]Handler
	streamMu sync.RWMutex // guards streams
	streams  map[string]StreamHandler
	log      *slog.Logger
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
}

// CheckPath returns nil when Listen may create its socket at path: nothing
// is there, or a stale socket that nothing answers on (Listen replaces it).
// Anything else is an error that says what is there: a live socket, a file,
// a directory, a symbolic link. Listen never removes any of those.
func CheckPath(path string) error {
	_, err := stalePath(path)
	return err
}

// stalePath checks path as CheckPath does and returns what Lstat saw there
// when it is a stale socket (nil when nothing is there).
func stalePath(path string) (fs.FileInfo, error) {
	if path == "" {
		return nil, errors.New("the control socket path is empty: pass --control PATH")
	}
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot check control socket path %s: %v", path, err)
	}
	if st.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("%s is %s, not a socket: refusing to replace it (pass --control with the path of a socket)", path, describe(path, st))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use: another korium-tun is running (stop it, or pass --control with another path)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// Not provably stale (no permission, or a listener too slow to
		// answer): leave it alone.
		return nil, fmt.Errorf("control socket %s exists and does not answer (%v): remove it if no korium-tun runs, or pass --control with another path", path, errors.Unwrap(err))
	}
	return st, nil
}

// describe names what st (Lstat of path) is, for errors.
func describe(path string, st fs.FileInfo) string {
	switch t := st.Mode().Type(); {
	case t == 0:
		return "a regular file"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeSymlink != 0:
		if to, err := os.Readlink(path); err == nil {
			return fmt.Sprintf("a symbolic link (to %s)", to)
		}
		return "a symbolic link"
	default:
		return "a " + t.String() + " file"
	}
}

// Listen creates the socket at path (its directory with mode 0700, the
// socket 0600). A stale socket left by a dead node (nothing answers on it)
// is replaced; a live one, and anything that is not a socket, is an error.
func Listen(path string, handlers map[string]Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("cannot create control socket directory %s: %v", filepath.Dir(path), err)
	}
	stale, err := stalePath(path)
	if err != nil {
		return nil, err
	}
	if stale != nil {
		// Remove only the socket we looked at, not whatever took its
		// place since.
		if st, err := os.Lstat(path); err == nil && os.SameFile(st, stale) {
			os.Remove(path)
		}
	}
	old := umask(0o177)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("cannot create control socket %s: %v", path, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		// Its Close would unlink whatever is at path by then; Close below
		// removes the socket only if it is still ours.
		ul.SetUnlinkOnClose(false)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, err
	}
	ours, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{ln: ln, path: path, sock: ours, handlers: handlers, streams: map[string]StreamHandler{}, log: log}
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
// It removes nothing that replaced our socket at the path.
func (s *Server) Close() error {
	s.cancel()
	err := s.ln.Close()
	s.wg.Wait()
	if st, serr := os.Lstat(s.path); serr == nil && os.SameFile(st, s.sock) {
		os.Remove(s.path)
	}
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
