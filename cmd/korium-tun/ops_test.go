//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/names"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
)

// runMain runs the CLI as a separate process (this test binary with
// KT_RUN_MAIN=1) and returns its exit code, stdout and stderr.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KT_RUN_MAIN=1", "KT_ARGS="+strings.Join(args, " "))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := run(t, args...)
		if err != nil || !strings.HasPrefix(out, "korium-tun ") || !strings.Contains(out, "(commit ") || strings.Count(out, "\n") != 1 {
			t.Fatalf("%v: %q %v", args, out, err)
		}
	}
	out, err := run(t, "version", "--json")
	var b buildInfo
	if err != nil || json.Unmarshal([]byte(out), &b) != nil || b.Version == "" || b.Commit == "" || !strings.HasPrefix(b.Go, "go") {
		t.Fatalf("version --json: %q %v", out, err)
	}
}

// `korium-tun bogus` used to print "No help topic for 'bogus'" and exit 3.
func TestUnknownCommand(t *testing.T) {
	code, stdout, stderr := runMain(t, "bogus")
	if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 ||
		!strings.HasPrefix(stderr, `korium-tun: unknown command "bogus"`) || !strings.Contains(stderr, "--help") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestHelpTexts(t *testing.T) {
	out, _ := run(t, "chat", "--help")
	if strings.Contains(out, "--control korium-tun up") || !strings.Contains(out, "--control value") {
		t.Errorf("chat --help renders --control wrong:\n%s", out)
	}
	out, _ = run(t, "id", "--help")
	if !strings.Contains(out, "--key value  identity key file") || !strings.Contains(out, defaultKeyPath) {
		t.Errorf("id --help does not describe --key and its default:\n%s", out)
	}
}

// `id` defaults to the key `up` uses.
func TestIDDefaultsToUpsKey(t *testing.T) {
	if _, err := os.Stat(defaultKeyPath); err == nil {
		t.Logf("%s exists here; checking only that id reads it", defaultKeyPath)
	}
	_, err := run(t, "id")
	if err != nil && !strings.Contains(err.Error(), defaultKeyPath) {
		t.Fatalf("id without --key: %v (want it to read %s)", err, defaultKeyPath)
	}
}

func TestEveryUpFlagHasAConfigKey(t *testing.T) {
	keys, err := configKeys(upFlags())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]bool{}
	for _, k := range keys {
		byName[k.Name] = true
	}
	var init bytes.Buffer
	if err := writeDefaultConfig(&init); err != nil {
		t.Fatal(err)
	}
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	up := app.Command("up")
	for _, f := range up.Flags {
		name := f.Names()[0]
		if name == configFlag {
			continue
		}
		key := keyName(name)
		if !byName[key] {
			t.Errorf("flag --%s has no config key", name)
		}
		if !strings.Contains(init.String(), "\n#"+key+":") {
			t.Errorf("config init does not list %s", key)
		}
	}
	for _, want := range []string{"key", "listen", "bootstrap", "tun", "mtu", "pow_bits", "control", "log_level", "relay", "metrics", "dns", "names_file"} {
		if !byName[want] {
			t.Errorf("no key %s", want)
		}
	}
}

// upValues runs up's flag and config handling (not the node) and returns
// the values up would use.
func upValues(t *testing.T, args ...string) (map[string]any, error) {
	t.Helper()
	var got map[string]any
	var ucfg *upConfig
	app := &cli.App{Name: "korium-tun", Commands: []*cli.Command{{
		Name:  "up",
		Flags: append(upFlags(), &cli.StringFlag{Name: configFlag, Value: defaultConfigPath}),
		Before: func(c *cli.Context) (err error) {
			ucfg, err = loadUpConfig(c, upFlags())
			return err
		},
		Action: func(c *cli.Context) error {
			got = map[string]any{}
			for _, f := range upFlags() {
				n := f.Names()[0]
				got[n] = c.Value(n)
			}
			got["origin"] = ucfg
			got["in_force"] = flagValues(c, upFlags())
			return nil
		},
	}}}
	err := app.Run(append([]string{"korium-tun", "up"}, args...))
	return got, err
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kp, _ := pki.GenerateKeypair(context.Background(), 0)
	id := kp.Identity().String()
	good := write("good.yaml", "mtu: 1300\nbootstrap:\n  - "+id+"@198.18.0.1:7400\n  - "+id+"@198.18.0.2:7400\nrelay: false\nlog_level: debug\nmetrics: 127.0.0.1:9474\n")
	v, err := upValues(t, "--config", good, "--log-level", "warn")
	if err != nil {
		t.Fatal(err)
	}
	if v["mtu"] != 1300 || v["relay"] != false || v["log-level"] != "warn" || v["metrics"] != "127.0.0.1:9474" || v["tun"] != "korium0" {
		t.Fatalf("values %v", v)
	}
	if b := v["bootstrap"].(cli.StringSlice); len(b.Value()) != 2 {
		t.Fatalf("bootstrap %v", b.Value())
	}
	if o := v["origin"].(*upConfig); o.optName("metrics") != good+":7: metrics" || o.optName("log-level") != "--log-level" {
		t.Fatalf("origins %v", o.origin)
	}

	// Every mistake is one line naming the file, the line and the key.
	cases := map[string]string{
		"mtu: 9000\n":                     ":1: mtu: 9000 is out of range",
		"\nmut: 1300\n":                   ":2: mut: unknown key (did you mean mtu?)",
		"bootstrap: [nothex@1.2.3.4:5]\n": ":1: bootstrap: ",
		"log_level: loud\n":               `:1: log_level: "loud": want debug, info, warn or error`,
		"pow_bits: 99\n":                  ":1: pow_bits: 99 is out of range",
		"listen: 7400\n":                  `:1: listen: "7400": want HOST:PORT`,
		"relay: maybe\n":                  `:1: relay: "maybe": want true or false`,
		"tun: a/b\n":                      ":1: tun: ",
		"dns: nowhere\n":                  `:1: dns: "nowhere": want HOST:PORT`,
		"config: x\n":                     ":1: config: unknown key",
	}
	i := 0
	for text, want := range cases {
		i++
		p := write(fmt.Sprintf("bad%d.yaml", i), text)
		_, err := upValues(t, "--config", p)
		oneLine(t, err, p+want)
	}
	_, err = upValues(t, "--config", filepath.Join(dir, "missing.yaml"))
	oneLine(t, err, "config init")

	// config init's file, with every setting uncommented, is every default.
	var init bytes.Buffer
	writeDefaultConfig(&init)
	var un strings.Builder
	for _, line := range strings.Split(init.String(), "\n") {
		if strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "# ") && line != "#" {
			line = line[1:]
		}
		un.WriteString(line + "\n")
	}
	all := write("all.yaml", un.String())
	withFile, err := upValues(t, "--config", all)
	if err != nil {
		t.Fatalf("uncommented config init: %v\n%s", err, un.String())
	}
	defaults, err := upValues(t, "--config", write("empty.yaml", ""))
	if err != nil {
		t.Fatal(err)
	}
	for k, dv := range defaults {
		if k != "origin" && k != "in_force" && fmt.Sprint(withFile[k]) != fmt.Sprint(dv) {
			t.Errorf("%s: config init gives %v, the default is %v", k, withFile[k], dv)
		}
	}
}

func TestConfigReload(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	kp, _ := pki.GenerateKeypair(context.Background(), 0)
	b1 := kp.Identity().String() + "@198.18.0.1:7400"
	os.WriteFile(p, []byte("log_level: info\nbootstrap: ["+b1+"]\n"), 0o644)
	v, err := upValues(t, "--config", p, "--tun", "kt0")
	if err != nil {
		t.Fatal(err)
	}
	u := v["origin"].(*upConfig)
	// What the node runs with, as services records it.
	current := v["in_force"].(map[string][]string)
	if fmt.Sprint(current["bootstrap"]) != "["+b1+"]" || current["tun"][0] != "kt0" || current["dns"][0] != "" {
		t.Fatalf("current %v", current)
	}
	os.WriteFile(p, []byte("log_level: debug\nmtu: 1300\ntun: other0\n"), 0o644)
	changed, restart, err := u.reload(func(f string) []string { return current[f] })
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(changed["log_level"]) != "[debug]" || len(changed["bootstrap"]) != 0 || !(len(changed) == 2) {
		t.Fatalf("changed %v", changed)
	}
	if _, ok := changed["bootstrap"]; !ok {
		t.Fatal("removing bootstrap from the file is not a change")
	}
	// mtu needs a restart; tun was given on the command line, which wins.
	if fmt.Sprint(restart) != "[mtu]" {
		t.Fatalf("restart %v", restart)
	}
	os.WriteFile(p, []byte("mtu: x\n"), 0o644)
	if _, _, err := u.reload(func(string) []string { return nil }); err == nil || !strings.Contains(err.Error(), p+":1: mtu") {
		t.Fatalf("bad file on reload: %v", err)
	}
}

// fakeNode serves canned control answers on a socket in a temp dir.
func fakeNode(t *testing.T, h map[string]control.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.sock")
	srv, err := control.Listen(path, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return path
}

func TestEmptyTablesSaySo(t *testing.T) {
	path := fakeNode(t, map[string]control.Handler{
		"status": func(context.Context, json.RawMessage) (any, error) {
			return statusJSON{Status: overlay.Status{Identity: "x", Drops: map[string]uint64{}}}, nil
		},
		"peers": func(context.Context, json.RawMessage) (any, error) { return peersJSON{}, nil },
	})
	out, err := run(t, "status", "--control", path)
	if err != nil || !strings.Contains(out, "no peers connected") || strings.Contains(out, "PEER") {
		t.Fatalf("status: %q %v", out, err)
	}
	out, err = run(t, "peers", "--control", path)
	if err != nil || !strings.Contains(out, "routing table is empty") || strings.Contains(out, "BUCKET") {
		t.Fatalf("peers: %q %v", out, err)
	}
}

// peers --json and status --json: snake_case keys and hex IDs throughout.
func TestJSONIsSnakeCaseAndHex(t *testing.T) {
	kp, _ := pki.GenerateKeypair(context.Background(), 0)
	path := fakeNode(t, map[string]control.Handler{
		"status": func(context.Context, json.RawMessage) (any, error) {
			return statusJSON{Status: overlay.Status{Identity: kp.Identity().String(), DHT: &dht.Stats{TableSize: 3}, Relay: nil},
				Names: map[string]string{kp.Identity().String(): "bob"}}, nil
		},
		"peers": func(context.Context, json.RawMessage) (any, error) {
			return peersJSON{Snapshot: dht.Snapshot{Self: dht.IDOf(kp.Identity()), Buckets: []dht.BucketInfo{{Index: 1,
				Contacts: []dht.ContactInfo{{Identity: kp.Identity()}}}}}}, nil
		},
	})
	for _, cmd := range []string{"status", "peers"} {
		out, err := run(t, cmd, "--control", path, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatal(err)
		}
		walkKeys(t, cmd, v)
		if cmd == "peers" && !strings.Contains(out, `"self": "`+dht.IDOf(kp.Identity()).String()+`"`) {
			t.Errorf("peers --json: self is not hex:\n%s", out)
		}
	}
}

func walkKeys(t *testing.T, where string, v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if where != "names" && (k != strings.ToLower(k) || strings.Contains(k, "-")) {
				if _, err := pki.ParseIdentity(k); err != nil {
					t.Errorf("%s: key %q is not snake_case", where, k)
				}
			}
			walkKeys(t, k, e)
		}
	case []any:
		for i, e := range v {
			if _, ok := e.(float64); ok && len(v) == 32 && i == 0 {
				t.Errorf("%s: an array of 32 numbers (an ID as bytes?)", where)
			}
			walkKeys(t, where, e)
		}
	}
}

// ping without a running node says so once, not "no reply" four times.
func TestPingWithoutNode(t *testing.T) {
	var out, errw bytes.Buffer
	err := newApp(&out, &errw).Run([]string{"korium-tun", "ping", "--control", filepath.Join(t.TempDir(), "none.sock"), "bob"})
	oneLine(t, err, "korium-tun up")
	if out.Len() != 0 {
		t.Fatalf("stdout %q, want nothing", out.String())
	}
}

func TestResolveErrors(t *testing.T) {
	err := resolveError("fd00:c0f1::1", fmt.Errorf("dht: 00000000: %w", dht.ErrNotFound))
	if msg := err.Error(); strings.Contains(msg, "dht:") || !strings.Contains(msg, "not running") {
		t.Fatalf("%q", msg)
	}
	if msg := resolveError("bob", dht.ErrNoPeers).Error(); !strings.Contains(msg, "bootstrap") {
		t.Fatalf("%q", msg)
	}
}

// names add/list/rm on a node: the node writes its names file, and the
// commands take and show names.
func TestNamesCommands(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "etc", "names")
	nn, err := loadNodeNames(file)
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]control.Handler{}
	namesHandlers(nil, nn, h)
	path := fakeNode(t, h)
	kp, _ := pki.GenerateKeypair(context.Background(), 0)
	id := kp.Identity().String()
	out, err := run(t, "names", "add", "--control", path, "bob", id)
	if err != nil || !strings.Contains(out, "bob.korium is "+id) {
		t.Fatalf("names add: %q %v", out, err)
	}
	if data, _ := os.ReadFile(file); !strings.Contains(string(data), "bob "+id+"\n") {
		t.Fatalf("names file:\n%s", data)
	}
	out, err = run(t, "names", "list", "--control", path, "--json")
	var list []nameEntry
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].Name != "bob" || list[0].Identity != id {
		t.Fatalf("names list --json: %q %v", out, err)
	}
	out, _ = run(t, "names", "list", "--control", path)
	if !strings.Contains(out, "NAME") || !strings.Contains(out, "bob") {
		t.Fatalf("names list: %q", out)
	}
	_, err = run(t, "names", "add", "--control", path, "Bad_Name", id)
	oneLine(t, err, "lowercase")
	_, err = run(t, "names", "add", "--control", path, "alice", "bob")
	oneLine(t, err, "IDENTITY")
	_, err = run(t, "names", "rm", "--control", path, "nobody")
	oneLine(t, err, "no peer is named")
	if _, err := run(t, "names", "rm", "--control", path, "bob.korium"); err != nil {
		t.Fatal(err)
	}
	if tb, _ := names.Load(file); tb.Len() != 0 {
		t.Fatalf("after rm: %v", tb.List())
	}
	out, _ = run(t, "names", "list", "--control", path, "--json")
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty list --json: %q", out)
	}
	// A names file that cannot be written: the name is not kept either.
	nn.path = "/proc/version/names"
	_, err = run(t, "names", "add", "--control", path, "bob", id)
	oneLine(t, err, "names_file")
	if nn.table.Len() != 0 {
		t.Fatal("a name that could not be saved was kept")
	}
}

func TestDMTarget(t *testing.T) {
	var ids []pki.Identity
	for len(ids) < 3 {
		kp, _ := pki.GenerateKeypair(context.Background(), 0)
		ids = append(ids, kp.Identity())
	}
	tbl := names.NewTable()
	tbl.Add("bob", ids[0])
	room := []gossipsub.PeerInfo{{ID: ids[0]}, {ID: ids[1]}, {ID: ids[2]}}
	for in, want := range map[string]pki.Identity{
		"bob":                ids[0],
		"bob.korium":         ids[0],
		ids[1].String():      ids[1],
		ids[2].Short():       ids[2],
		ids[1].String()[:12]: ids[1],
	} {
		got, err := dmTarget(in, tbl, room)
		if err != nil || got != want {
			t.Errorf("dmTarget(%q) = %v, %v", in, got.Short(), err)
		}
	}
	if _, err := dmTarget("", tbl, room); err == nil {
		t.Error("empty prefix matched")
	}
	if _, err := dmTarget("alice", tbl, room); err == nil || !strings.Contains(err.Error(), "no peer is named") {
		t.Errorf("unknown name: %v", err)
	}
	if _, err := dmTarget("0000000000", tbl, room[:0]); err == nil || !strings.Contains(err.Error(), "no one in the room") {
		t.Errorf("no match: %v", err)
	}
	// Two identities that share a first character (likely among 16).
	same := []gossipsub.PeerInfo{{ID: ids[0]}, {ID: ids[0]}}
	if _, err := dmTarget(ids[0].String()[:1], tbl, same); err == nil || !strings.Contains(err.Error(), "type more") {
		t.Errorf("ambiguous: %v", err)
	}
}

// At a terminal, a line that arrives while the user types is printed above
// the half-typed line, which is drawn again after it.
func TestChatTerminalKeepsTypedLine(t *testing.T) {
	inR, inW := net.Pipe()
	var screen lockedBuffer
	cio := newTermChatIO(termRW{r: inR, w: &screen})
	got := make(chan string, 1)
	go func() { l, _ := cio.readLine(); got <- l }()
	inW.Write([]byte("hel"))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(screen.String(), "> hel") {
		if time.Now().After(deadline) {
			t.Fatalf("typed text not echoed: %q", screen.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Fprintf(cio.out, "[lobby] bob: hi\n")
	s := screen.String()
	i := strings.LastIndex(s, "[lobby] bob: hi\r\n")
	if i < 0 || !strings.HasSuffix(s, "> hel") || !strings.Contains(s[:i], "\x1b[") {
		t.Fatalf("screen %q: want the line cleared, the message, then the prompt and typed text again", s)
	}
	inW.Write([]byte("lo\r"))
	select {
	case l := <-got:
		if l != "hello" {
			t.Fatalf("read %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("line not read")
	}
	// Ctrl-C at an empty line ends the chat (raw mode sends no SIGINT).
	go func() { _, err := cio.readLine(); got <- fmt.Sprint(err) }()
	inW.Write([]byte{3})
	if e := <-got; e != "EOF" {
		t.Fatalf("Ctrl-C: %q", e)
	}
	inW.Close()
}

type termRW struct {
	r net.Conn
	w *lockedBuffer
}

func (t termRW) Read(b []byte) (int, error)  { return t.r.Read(b) }
func (t termRW) Write(b []byte) (int, error) { return t.w.Write(b) }

type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func TestSDNotify(t *testing.T) {
	if ok, err := sdNotifyEnv("", "READY=1"); ok || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v %v", ok, err)
	}
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), fmt.Sprintf("@kt-notify-%d", os.Getpid())} {
		addr := name
		if addr[0] == '@' {
			addr = "\x00" + addr[1:]
		}
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		ok, err := sdNotifyEnv(name, "READY=1")
		if !ok || err != nil {
			t.Fatalf("%s: %v %v", name, ok, err)
		}
		buf := make([]byte, 64)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		c.Close()
		if err != nil || string(buf[:n]) != "READY=1" {
			t.Fatalf("%s: got %q %v", name, buf[:n], err)
		}
	}
	if _, err := sdNotifyEnv(filepath.Join(t.TempDir(), "none"), "READY=1"); err == nil {
		t.Fatal("a missing socket is not an error")
	}
}

// registerResolved with a fake resolvectl: the TUN link gets the node's DNS
// address and the routing-only domain ~korium.
func TestRegisterResolved(t *testing.T) {
	dir := t.TempDir()
	logf := filepath.Join(dir, "calls")
	os.WriteFile(filepath.Join(dir, "resolvectl"), []byte("#!/bin/sh\necho \"$@\" >> "+logf+"\n"), 0o755)
	t.Setenv("PATH", dir)
	old, oldNS := resolvedRunDir, inHostNetNS
	defer func() { resolvedRunDir, inHostNetNS = old, oldNS }()
	inHostNetNS = func() bool { return true }
	resolvedRunDir = filepath.Join(dir, "absent")
	if ok, err := registerResolved(context.Background(), discard(), "korium0", mustAddrPort("[fd00:c0f1::1]:53")); ok || err != nil {
		t.Fatalf("without resolved: %v %v", ok, err)
	}
	resolvedRunDir = dir
	if ok, err := registerResolved(context.Background(), discard(), "korium0", mustAddrPort("[fd00:c0f1::1]:53")); !ok || err != nil {
		t.Fatalf("%v %v", ok, err)
	}
	data, _ := os.ReadFile(logf)
	if string(data) != "dns korium0 fd00:c0f1::1\ndomain korium0 ~korium\ndefault-route korium0 false\n" {
		t.Fatalf("resolvectl calls:\n%s", data)
	}
	os.Remove(logf)
	registerResolved(context.Background(), discard(), "kt1", mustAddrPort("[fd00:c0f1::1]:5353"))
	if data, _ := os.ReadFile(logf); !strings.HasPrefix(string(data), "dns kt1 [fd00:c0f1::1]:5353\n") {
		t.Fatalf("resolvectl calls:\n%s", data)
	}
	// In another network namespace than the host's, resolved is not asked.
	os.Remove(logf)
	inHostNetNS = func() bool { return false }
	if ok, _ := registerResolved(context.Background(), discard(), "korium0", mustAddrPort("[fd00:c0f1::1]:53")); ok {
		t.Fatal("registered from a network namespace")
	}
	if _, err := os.Stat(logf); err == nil {
		t.Fatal("resolvectl ran from a network namespace")
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestConfigKeyKinds(t *testing.T) {
	keys, err := configKeys([]cli.Flag{
		&cli.StringFlag{Name: "a-b", Value: "x"}, &cli.IntFlag{Name: "i", Value: 3}, &cli.BoolFlag{Name: "b"},
		&cli.StringSliceFlag{Name: "l"}, &cli.DurationFlag{Name: "d", Value: time.Second}, &cli.Int64Flag{Name: "i64"},
		&cli.UintFlag{Name: "u"}, &cli.Uint64Flag{Name: "u64"}, &cli.Float64Flag{Name: "f"}, &cli.PathFlag{Name: "p"},
		&cli.StringFlag{Name: configFlag},
	})
	if err != nil || len(keys) != 10 || keys[0].Name != "a_b" || keys[4].Default[0] != "1s" {
		t.Fatalf("%+v %v", keys, err)
	}
	if _, err := configKeys([]cli.Flag{&cli.TimestampFlag{Name: "t"}}); err == nil {
		t.Fatal("a flag type without a key kind was accepted")
	}
}

// SIGHUP's bootstrap change on a real (in-process) node: a new bootstrap
// peer is dialed and kept, a removed one is no longer kept.
func TestReloadBootstraps(t *testing.T) {
	start := func() *overlay.Node {
		kp, _ := pki.GenerateKeypair(context.Background(), 4)
		n, err := overlay.New(overlay.Config{Keypair: kp, PoWBits: 4, Listen: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	n, p := start(), start()
	s := &services{node: n, log: discard(), flags: map[string][]string{}}
	boot := p.Contact(netip.MustParseAddr("127.0.0.1")).String()
	s.setBootstraps([]string{boot})
	if kept := n.KeptPeers(); len(kept) != 1 || kept[0].Identity != p.Identity() {
		t.Fatalf("kept %v", kept)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(n.Status().Peers) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the new bootstrap peer was not dialed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.setBootstraps(nil)
	if kept := n.KeptPeers(); len(kept) != 0 {
		t.Fatalf("still kept after removal: %v", kept)
	}
}
