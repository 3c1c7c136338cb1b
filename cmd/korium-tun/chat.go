package main

import (
	"bufio"
	"context"
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
		},
		Action: func(c *cli.Context) error { return chat(c, stdin, stdout, stderr) },
	}
}

func chat(c *cli.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	level, err := parseLevel(c.String("log-level"))
	if err != nil {
		return err
	}
	bits := c.Int("pow-bits")
	if err := checkPoWFlag(bits); err != nil {
		return err
	}
	room := c.String("room")
	if room == "" || len(room) > 128 || strings.ContainsFunc(room, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) {
		return fmt.Errorf("--room %q: want 1-128 printable characters without spaces", room)
	}
	var boot []overlay.Contact
	for _, s := range c.StringSlice("bootstrap") {
		ct, err := overlay.ParseContact(s)
		if err != nil {
			return fmt.Errorf("--bootstrap: %v", err)
		}
		boot = append(boot, ct)
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
	powBits := bits
	if powBits == 0 {
		powBits = -1 // overlay: negative means none
	}
	node, err := overlay.New(overlay.Config{
		Keypair: kp, PoWBits: powBits, Listen: c.String("listen"), Bootstrap: boot,
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

// chatLine handles one typed line; it reports whether to quit.
func chatLine(ctx context.Context, node *overlay.Node, topic, line string, stdout io.Writer) bool {
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
