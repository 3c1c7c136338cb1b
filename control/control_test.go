package control

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRoundTripAndPermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "c.sock")
	s, err := Listen(path, map[string]Handler{
		"echo": func(_ context.Context, a json.RawMessage) (any, error) { return json.RawMessage(a), nil },
		"fail": func(context.Context, json.RawMessage) (any, error) { return nil, errors.New("boom") },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %o", st.Mode().Perm())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out map[string]int
	if err := Call(ctx, path, "echo", map[string]int{"a": 1}, &out); err != nil || out["a"] != 1 {
		t.Fatalf("echo: %v %v", out, err)
	}
	if err := Call(ctx, path, "fail", nil, nil); err == nil || err.Error() != "boom" {
		t.Fatalf("fail: %v", err)
	}
	if err := Call(ctx, path, "nope", nil, nil); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("unknown: %v", err)
	}
	// A second server on a live socket is refused.
	if _, err := Listen(path, nil, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Listen: %v", err)
	}
	// Garbage and oversized requests get errors, not crashes.
	for _, req := range []string{"{not json\n", strings.Repeat("x", maxRequest+10) + "\n"} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(req))
		var resp Response
		json.NewDecoder(c).Decode(&resp)
		c.Close()
		if resp.Error == "" {
			t.Fatalf("request %.20q accepted", req)
		}
	}
}

func TestStaleSocketReplacedAndMissingNodeExplained(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	// A stale socket: its node died without removing it.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	s, err := Listen(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("socket not removed on Close")
	}
	err = Call(context.Background(), path, "status", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "korium-tun up") {
		t.Fatalf("Call without node: %v", err)
	}
}

// FuzzHandle feeds arbitrary request bytes to the server's handler: it must
// always answer with a JSON response and never panic.
func FuzzHandle(f *testing.F) {
	f.Add([]byte(`{"cmd":"echo","args":{"a":1}}` + "\n"))
	f.Add([]byte("{\n"))
	f.Add([]byte(`{"cmd":"nope"}` + "\n"))
	s := &Server{handlers: map[string]Handler{
		"echo": func(_ context.Context, a json.RawMessage) (any, error) { return a, nil },
	}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	f.Fuzz(func(t *testing.T, req []byte) {
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() { defer close(done); s.handle(b) }()
		go func() { a.Write(req); a.Write([]byte("\n")) }()
		var resp Response
		if err := json.NewDecoder(a).Decode(&resp); err != nil {
			t.Fatalf("no JSON response to %q: %v", req, err)
		}
		a.Close()
		<-done
	})
}

func TestStream(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	s, err := Listen(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ended := make(chan struct{})
	s.HandleStream("count", func(ctx context.Context, _ json.RawMessage, emit func(any) error) error {
		defer close(ended)
		for i := 0; ; i++ {
			if i == 3 {
				<-ctx.Done() // the client leaves after 3
				return nil
			}
			if err := emit(i); err != nil {
				return err
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []int
	err = Stream(ctx, path, "count", nil, func(raw json.RawMessage) error {
		var v int
		json.Unmarshal(raw, &v)
		got = append(got, v)
		if len(got) == 3 {
			return errors.New("enough")
		}
		return nil
	})
	if err == nil || err.Error() != "enough" || len(got) != 3 || got[2] != 2 {
		t.Fatalf("Stream: %v %v", got, err)
	}
	select {
	case <-ended: // the handler saw the client leave
	case <-time.After(5 * time.Second):
		t.Fatal("stream handler still running after the client left")
	}
}

// Listen never removes what is not a stale socket: a key file, a
// directory, a symbolic link (nor its target), a live socket. A stale
// socket (nothing answers on it) is replaced.
func TestListenRemovesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "key")
	if err := os.WriteFile(file, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	dangling := filepath.Join(dir, "dangling")
	os.Symlink(filepath.Join(dir, "missing"), dangling)
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o700)
	for path, want := range map[string]string{
		file:     "is a regular file, not a socket: refusing to replace it",
		link:     "is a symbolic link (to " + file + "), not a socket",
		dangling: "is a symbolic link (to " + filepath.Join(dir, "missing") + "), not a socket",
		sub:      "is a directory, not a socket",
		"":       "path is empty",
	} {
		_, err := Listen(path, nil, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Listen(%q) = %v, want %q", path, err, want)
		}
		if CheckPath(path) == nil {
			t.Fatalf("CheckPath(%q) = nil", path)
		}
		t.Logf("Listen(%q): %v", filepath.Base(path), err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "secret" {
		t.Fatalf("the file was touched: %q %v", b, err)
	}
	for _, p := range []string{link, dangling, sub} {
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("%s removed", p)
		}
	}

	// A stale socket: a listener that went away without unlinking.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if err := CheckPath(stale); err != nil {
		t.Fatalf("CheckPath(stale socket) = %v", err)
	}
	s, err := Listen(stale, map[string]Handler{"ping": func(context.Context, json.RawMessage) (any, error) { return "pong", nil }}, nil)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out string
	if err := Call(ctx, stale, "ping", nil, &out); err != nil || out != "pong" {
		t.Fatalf("call: %q %v", out, err)
	}
	if err := CheckPath(stale); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("CheckPath(live socket) = %v", err)
	}
	// Something that replaced our socket survives our Close.
	os.Remove(stale)
	os.WriteFile(stale, []byte("not ours"), 0o600)
	s.Close()
	if b, err := os.ReadFile(stale); err != nil || string(b) != "not ours" {
		t.Fatalf("Close removed a file that replaced its socket: %q %v", b, err)
	}
	// And our own socket is removed by Close.
	own := filepath.Join(dir, "own.sock")
	s2, err := Listen(own, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if _, err := os.Lstat(own); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left its socket: %v", err)
	}
}
