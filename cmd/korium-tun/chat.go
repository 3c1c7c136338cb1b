package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/names"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// maxChatLine bounds a typed line (a message is at most 64 KiB on the wire).
const maxChatLine = 4096

func chatCommand(stdin io.Reader, stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "chat",
		Usage: "join a chat room: lines typed go to everyone in it (runs its own in-process node; no root needed)",
		Description: "Commands: /peers lists the room, /dm PEER TEXT sends a direct message (PEER: a name, or an identity\n" +
			"or its first characters as shown in the room), /quit leaves. At a terminal, lines that arrive while you type are\n" +
			"printed above your line; with stdin/stdout piped, it keeps printing after stdin ends until SIGINT/SIGTERM.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "room", Required: true, Usage: "room name"},
			&cli.StringFlag{Name: "key", Usage: "identity key file (created if missing; default: a fresh identity each run)"},
			&cli.StringFlag{Name: "listen", Value: "[::]:0", Usage: "UDP HOST:PORT to listen on"},
			&cli.StringSliceFlag{Name: "bootstrap", Usage: "IDENTITY@HOST:PORT of a peer (repeatable)"},
			&cli.IntFlag{Name: "pow-bits", Value: pki.DefaultPoWBits, Usage: "network proof-of-work difficulty"},
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "control", Usage: "attach to the running node (korium-tun up) at this control socket instead of running one"},
			&cli.StringFlag{Name: "names-file", Value: names.DefaultPath, Usage: "names of peers for /dm and display (own node only; attached, the node's names are used)"},
		},
		Action: func(c *cli.Context) error { return chat(c, stdin, stdout, stderr) },
	}
}

func chat(c *cli.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	level, bits, err := nodeFlags(c)
	if err != nil {
		return err
	}
	room := c.String("room")
	if err := checkRoom(room); err != nil {
		return fmt.Errorf("--room %v", err)
	}
	if path := c.String("control"); path != "" {
		if c.IsSet("key") || c.IsSet("bootstrap") || c.IsSet("listen") {
			return errors.New("--control attaches to a running node: --key, --bootstrap and --listen belong to that node")
		}
		return chatAttached(c.Context, path, room, stdin, stdout)
	}
	tbl, err := names.Load(c.String("names-file"))
	if err != nil {
		if c.IsSet("names-file") {
			return err
		}
		tbl = names.NewTable() // the default file is a convenience, not a need
	}
	boot, err := parseBootstraps(c)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var kp *pki.Keypair
	if path := c.String("key"); path != "" {
		if kp, _, err = pki.LoadOrCreateKeyFile(ctx, path, bits); err != nil {
			return err
		}
	} else if kp, err = generate(ctx, stderr, bits); err != nil {
		return err
	}
	node, err := overlay.New(overlay.Config{
		Keypair: kp, PoWBits: overlayPoW(bits), Listen: c.String("listen"), Bootstrap: boot,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		return err
	}
	defer node.Close()
	topic := "chat/" + room
	sub, err := node.Subscribe(topic)
	if err != nil {
		return err
	}
	cio := newChatIO(stdin, stdout)
	defer cio.close()
	out := cio.out
	node.SetRequestHandler(func(_ context.Context, from pki.Identity, req []byte) ([]byte, error) {
		fmt.Fprintf(out, "[dm] %s: %s\n", displayName(tbl, from), sanitize(req))
		return []byte("ok"), nil
	})
	for _, b := range bootstrapStrings(node) {
		fmt.Fprintf(out, "bootstrap %s\n", b)
	}
	fmt.Fprintf(out, "joined #%s as %s (%s)\n", room, kp.Identity(), smartaddr.FromIdentity(kp.Identity()))

	go func() {
		for m := range sub.Messages() {
			if m.From != kp.Identity() {
				fmt.Fprintf(out, "[%s] %s: %s\n", room, displayName(tbl, m.From), sanitize(m.Data))
			}
		}
	}()
	return chatLoop(ctx, node, tbl, topic, cio)
}

// displayName is how a chat shows a peer: its name, or the first 8 hex of
// its identity (what /dm accepts).
func displayName(tbl *names.Table, id pki.Identity) string {
	if n := tbl.NameOf(id); n != "" {
		return n
	}
	return id.Short()
}

// checkRoom accepts 1-128 printable characters without spaces: the CLI
// checks --room with it, and a node checks what an attached chat asks for.
func checkRoom(room string) error {
	if room == "" || len(room) > 128 || strings.ContainsFunc(room, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) {
		return fmt.Errorf("%q: want 1-128 printable characters without spaces", room)
	}
	return nil
}

// chatIO is where a chat reads typed lines and prints. At a terminal it
// puts the terminal in raw mode and edits the line itself (x/term), so a
// line that arrives while the user types is printed above the half-typed
// line, which is then drawn again; Ctrl-C or Ctrl-D leaves. Otherwise it
// reads lines from stdin and writes to stdout as they are.
type chatIO struct {
	out       io.Writer // safe for concurrent use
	readLine  func() (string, error)
	quitOnEOF bool
	restore   func()
}

func newChatIO(stdin io.Reader, stdout io.Writer) *chatIO {
	in, ok1 := stdin.(*os.File)
	out, ok2 := stdout.(*os.File)
	if ok1 && ok2 && term.IsTerminal(int(in.Fd())) && term.IsTerminal(int(out.Fd())) {
		if state, err := term.MakeRaw(int(in.Fd())); err == nil {
			cio := newTermChatIO(struct {
				io.Reader
				io.Writer
			}{in, out})
			if w, h, err := term.GetSize(int(out.Fd())); err == nil {
				cio.out.(*term.Terminal).SetSize(w, h)
			}
			cio.restore = func() { term.Restore(int(in.Fd()), state) }
			return cio
		}
	}
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, maxChatLine), maxChatLine)
	return &chatIO{
		out: &lockedWriter{w: stdout},
		readLine: func() (string, error) {
			if sc.Scan() {
				return sc.Text(), nil
			}
			if err := sc.Err(); err != nil {
				return "", err
			}
			return "", io.EOF
		},
		restore: func() {},
	}
}

// newTermChatIO edits lines on a raw-mode terminal rw.
func newTermChatIO(rw io.ReadWriter) *chatIO {
	t := term.NewTerminal(rw, "> ")
	return &chatIO{out: t, readLine: t.ReadLine, quitOnEOF: true, restore: func() {}}
}

func (c *chatIO) close() { c.restore() }

// lockedWriter serializes writes of whole lines from several goroutines.
type lockedWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// chatLoop reads typed lines until /quit, a signal, or (after stdin ends)
// a signal; at a terminal, Ctrl-C or Ctrl-D also leave.
func chatLoop(ctx context.Context, node chatNode, tbl *names.Table, topic string, cio *chatIO) error {
	lines := make(chan string)
	go func() {
		defer close(lines)
		for {
			line, err := cio.readLine()
			if err != nil {
				return
			}
			if len(line) > maxChatLine {
				line = line[:maxChatLine]
			}
			select {
			case lines <- line:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case line, ok := <-lines:
			if !ok {
				if cio.quitOnEOF {
					return nil
				}
				lines = nil // stdin ended: keep printing until a signal
				continue
			}
			if quit := chatLine(ctx, node, tbl, topic, strings.TrimSpace(line), cio.out); quit {
				return nil
			}
		}
	}
}

// chatEvent is one item of the control socket's "chat" stream.
type chatEvent struct {
	Kind string `json:"kind"` // "joined", "room" or "dm"
	From string `json:"from"` // identity (for "joined": the node's)
	Text string `json:"text"` // for "joined": the node's SmartAddr
}

// chatAttached runs a chat on the node behind the control socket at path.
func chatAttached(parent context.Context, path, room string, stdin io.Reader, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	topic := "chat/" + room
	streamErr := make(chan error, 1)
	joined := make(chan struct{})
	tbl := names.NewTable()
	nctx, ncancel := context.WithTimeout(ctx, 10*time.Second)
	for id, n := range fetchNames(nctx, path) {
		if pid, err := pki.ParseIdentity(id); err == nil {
			tbl.Add(n, pid)
		}
	}
	ncancel()
	cio := newChatIO(stdin, stdout)
	defer cio.close()
	stdout = cio.out
	go func() {
		streamErr <- control.Stream(ctx, path, "chat", map[string]string{"room": room}, func(raw json.RawMessage) error {
			var ev chatEvent
			if err := json.Unmarshal(raw, &ev); err != nil {
				return err
			}
			short := ev.From
			if id, err := pki.ParseIdentity(ev.From); err == nil {
				short = displayName(tbl, id)
			}
			switch ev.Kind {
			case "joined":
				fmt.Fprintf(stdout, "joined #%s as %s (%s) through %s\n", room, ev.From, ev.Text, path)
				close(joined)
			case "room":
				fmt.Fprintf(stdout, "[%s] %s: %s\n", room, short, sanitize([]byte(ev.Text)))
			case "dm":
				fmt.Fprintf(stdout, "[dm] %s: %s\n", short, sanitize([]byte(ev.Text)))
			}
			return nil
		})
	}()
	select {
	case err := <-streamErr:
		if err == nil {
			err = errors.New("the node closed the chat stream")
		}
		return err
	case <-joined:
	}
	loopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // the node went away: stop reading input
		<-streamErr
		cancel()
	}()
	return chatLoop(loopCtx, controlChat{path}, tbl, topic, cio)
}

// controlChat is a chatNode reached through a control socket.
type controlChat struct{ path string }

func (cc controlChat) Publish(topic string, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return control.Call(ctx, cc.path, "publish", map[string]string{"topic": topic, "data": string(data)}, nil)
}

func (cc controlChat) Send(ctx context.Context, to pki.Identity, data []byte) ([]byte, error) {
	var resp string
	err := control.Call(ctx, cc.path, "send", map[string]string{"to": to.String(), "data": string(data)}, &resp)
	return []byte(resp), err
}

func (cc controlChat) TopicPeers(topic string) []gossipsub.PeerInfo {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ids []pki.Identity
	control.Call(ctx, cc.path, "topic_peers", map[string]string{"topic": topic}, &ids)
	out := make([]gossipsub.PeerInfo, len(ids))
	for i, id := range ids {
		out[i].ID = id
	}
	return out
}

// chatControl registers what an attached chat uses on a running node: the
// "chat" stream (room messages and direct messages, one attached chat at a
// time) and publish, send and topic_peers.
func chatControl(node *overlay.Node, ctl *control.Server) {
	ctl.HandleStream("chat", func(ctx context.Context, args json.RawMessage, emit func(any) error) error {
		var a struct{ Room string }
		if err := json.Unmarshal(args, &a); err != nil {
			return errors.New("chat needs a room")
		}
		if err := checkRoom(a.Room); err != nil {
			return fmt.Errorf("room %v", err)
		}
		topic := "chat/" + a.Room
		sub, err := node.Subscribe(topic)
		if err != nil {
			return fmt.Errorf("cannot join #%s on this node (is another chat attached to it?): %v", a.Room, err)
		}
		defer node.Unsubscribe(topic)
		node.SetRequestHandler(func(_ context.Context, from pki.Identity, req []byte) ([]byte, error) {
			if err := emit(chatEvent{Kind: "dm", From: from.String(), Text: string(req)}); err != nil {
				return nil, err
			}
			return []byte("ok"), nil
		})
		defer node.SetRequestHandler(nil)
		if err := emit(chatEvent{Kind: "joined", From: node.Identity().String(), Text: node.Addr().String()}); err != nil {
			return nil
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case m, ok := <-sub.Messages():
				if !ok {
					return nil
				}
				if m.From != node.Identity() {
					if err := emit(chatEvent{Kind: "room", From: m.From.String(), Text: string(m.Data)}); err != nil {
						return nil
					}
				}
			}
		}
	})
}

func chatHandlers(node *overlay.Node, h map[string]control.Handler) {
	h["publish"] = func(_ context.Context, args json.RawMessage) (any, error) {
		var a struct{ Topic, Data string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		return nil, node.Publish(a.Topic, []byte(a.Data))
	}
	h["send"] = func(ctx context.Context, args json.RawMessage) (any, error) {
		var a struct{ To, Data string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		id, err := pki.ParseIdentity(a.To)
		if err != nil {
			return nil, err
		}
		resp, err := node.Send(ctx, id, []byte(a.Data))
		return string(resp), err
	}
	h["topic_peers"] = func(_ context.Context, args json.RawMessage) (any, error) {
		var a struct{ Topic string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		var ids []pki.Identity
		for _, p := range node.TopicPeers(a.Topic) {
			ids = append(ids, p.ID)
		}
		return ids, nil
	}
}

// chatNode is what a chat needs from a node: the node itself (its own
// in-process node) or a running `korium-tun up` reached through its control
// socket.
type chatNode interface {
	Publish(topic string, data []byte) error
	Send(ctx context.Context, to pki.Identity, data []byte) ([]byte, error)
	TopicPeers(topic string) []gossipsub.PeerInfo
}

// chatLine handles one typed line; it reports whether to quit.
func chatLine(ctx context.Context, node chatNode, tbl *names.Table, topic, line string, stdout io.Writer) bool {
	switch {
	case line == "":
	case line == "/quit":
		return true
	case line == "/peers":
		peers := node.TopicPeers(topic)
		fmt.Fprintf(stdout, "%d in the room besides you\n", len(peers))
		for _, p := range peers {
			fmt.Fprintf(stdout, "  %-10s %s  %s\n", displayName(tbl, p.ID), p.ID, smartaddr.FromIdentity(p.ID))
		}
	case strings.HasPrefix(line, "/dm "):
		who, text, _ := strings.Cut(strings.TrimSpace(strings.TrimPrefix(line, "/dm ")), " ")
		text = strings.TrimSpace(text)
		if who == "" || text == "" {
			fmt.Fprintln(stdout, "usage: /dm PEER TEXT (PEER: a name, or an identity or its first characters as shown in the room)")
			return false
		}
		id, err := dmTarget(who, tbl, node.TopicPeers(topic))
		if err != nil {
			fmt.Fprintln(stdout, err)
			return false
		}
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, err = node.Send(cctx, id, []byte(text))
		cancel()
		if err != nil {
			fmt.Fprintf(stdout, "dm to %s failed: %v\n", displayName(tbl, id), err)
		} else {
			fmt.Fprintf(stdout, "dm to %s delivered\n", displayName(tbl, id))
		}
	case strings.HasPrefix(line, "/"):
		fmt.Fprintln(stdout, "commands: /peers, /dm PEER TEXT, /quit")
	default:
		if err := node.Publish(topic, []byte(line)); err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(stdout, "not sent: %v\n", err)
		}
	}
	return false
}

// dmTarget finds the peer /dm means: a full identity, a name, or the
// start of the identity of exactly one peer in the room.
func dmTarget(who string, tbl *names.Table, room []gossipsub.PeerInfo) (pki.Identity, error) {
	if id, err := pki.ParseIdentity(who); err == nil {
		return id, nil
	}
	if id, ok := tbl.Lookup(who); ok {
		return id, nil
	}
	prefix := strings.ToLower(who)
	if strings.Trim(prefix, "0123456789abcdef") != "" {
		return pki.Identity{}, fmt.Errorf("no peer is named %q (names: korium-tun names list; or give the identity as shown in the room)", who)
	}
	var found []pki.Identity
	for _, p := range room {
		if strings.HasPrefix(p.ID.String(), prefix) {
			found = append(found, p.ID)
		}
	}
	switch len(found) {
	case 0:
		return pki.Identity{}, fmt.Errorf("no one in the room has an identity starting with %s (/peers lists them)", prefix)
	case 1:
		return found[0], nil
	}
	return pki.Identity{}, fmt.Errorf("%s is the start of %d identities in the room: type more of it", prefix, len(found))
}

// sanitize makes a peer's text safe to print: control characters (terminal
// escape sequences among them) become '?', and it is cut to one line.
func sanitize(b []byte) string {
	s := strings.ToValidUTF8(string(b), "?")
	if len(s) > maxChatLine {
		s = s[:maxChatLine]
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}
