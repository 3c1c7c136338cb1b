package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/gossipsub"
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
		Description: "Commands: /peers lists the room, /dm IDENTITY TEXT sends a direct message, /quit leaves.\n" +
			"Works at a terminal and with stdin/stdout piped; after stdin ends it keeps printing until SIGINT/SIGTERM.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "room", Required: true, Usage: "room name"},
			&cli.StringFlag{Name: "key", Usage: "identity key file (created if missing; default: a fresh identity each run)"},
			&cli.StringFlag{Name: "listen", Value: "[::]:0", Usage: "UDP HOST:PORT to listen on"},
			&cli.StringSliceFlag{Name: "bootstrap", Usage: "IDENTITY@HOST:PORT of a peer (repeatable)"},
			&cli.IntFlag{Name: "pow-bits", Value: pki.DefaultPoWBits, Usage: "network proof-of-work difficulty"},
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "control", Usage: "attach to the running `korium-tun up` node at this control socket instead of running a node"},
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
	node.SetRequestHandler(func(_ context.Context, from pki.Identity, req []byte) ([]byte, error) {
		fmt.Fprintf(stdout, "[dm] %s: %s\n", from.Short(), sanitize(req))
		return []byte("ok"), nil
	})
	for _, b := range bootstrapStrings(node) {
		fmt.Fprintf(stdout, "bootstrap %s\n", b)
	}
	fmt.Fprintf(stdout, "joined #%s as %s (%s)\n", room, kp.Identity(), smartaddr.FromIdentity(kp.Identity()))

	go func() {
		for m := range sub.Messages() {
			if m.From != kp.Identity() {
				fmt.Fprintf(stdout, "[%s] %s: %s\n", room, m.From.Short(), sanitize(m.Data))
			}
		}
	}()
	return chatLoop(ctx, node, topic, stdin, stdout)
}

// checkRoom accepts 1-128 printable characters without spaces: the CLI
// checks --room with it, and a node checks what an attached chat asks for.
func checkRoom(room string) error {
	if room == "" || len(room) > 128 || strings.ContainsFunc(room, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) {
		return fmt.Errorf("%q: want 1-128 printable characters without spaces", room)
	}
	return nil
}

// chatLoop reads typed lines until /quit, a signal, or (after stdin ends)
// a signal.
func chatLoop(ctx context.Context, node chatNode, topic string, stdin io.Reader, stdout io.Writer) error {
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, maxChatLine), maxChatLine)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
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
				lines = nil // stdin ended: keep printing until a signal
				continue
			}
			if quit := chatLine(ctx, node, topic, strings.TrimSpace(line), stdout); quit {
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
	go func() {
		streamErr <- control.Stream(ctx, path, "chat", map[string]string{"room": room}, func(raw json.RawMessage) error {
			var ev chatEvent
			if err := json.Unmarshal(raw, &ev); err != nil {
				return err
			}
			short := ev.From
			if len(short) > 8 {
				short = short[:8]
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
	return chatLoop(loopCtx, controlChat{path}, topic, stdin, stdout)
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
func chatLine(ctx context.Context, node chatNode, topic, line string, stdout io.Writer) bool {
	switch {
	case line == "":
	case line == "/quit":
		return true
	case line == "/peers":
		peers := node.TopicPeers(topic)
		fmt.Fprintf(stdout, "%d in the room besides you\n", len(peers))
		for _, p := range peers {
			fmt.Fprintf(stdout, "  %s  %s\n", p.ID, smartaddr.FromIdentity(p.ID))
		}
	case strings.HasPrefix(line, "/dm "):
		idText, text, _ := strings.Cut(strings.TrimPrefix(line, "/dm "), " ")
		id, err := pki.ParseIdentity(idText)
		if err != nil || text == "" {
			fmt.Fprintln(stdout, "usage: /dm IDENTITY TEXT (IDENTITY is 64 lowercase hex)")
			return false
		}
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, err = node.Send(cctx, id, []byte(text))
		cancel()
		if err != nil {
			fmt.Fprintf(stdout, "dm to %s failed: %v\n", id.Short(), err)
		} else {
			fmt.Fprintf(stdout, "dm to %s delivered\n", id.Short())
		}
	case strings.HasPrefix(line, "/"):
		fmt.Fprintln(stdout, "commands: /peers, /dm IDENTITY TEXT, /quit")
	default:
		if err := node.Publish(topic, []byte(line)); err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(stdout, "not sent: %v\n", err)
		}
	}
	return false
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
