package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/control"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
)

// The threshold CA's commands run through the `korium-tun up` node behind
// the control socket, on its "ca_dkg" and "cert_request" streams (they
// outlast the control socket's 25-second calls).

// caEvent is one line of the ca_dkg and cert_request streams.
type caEvent struct {
	Kind string `json:"kind"` // "waiting", "done" or "error" (Text says why)
	Text string `json:"text,omitempty"`
	// ca_dkg's result:
	CAKey    string           `json:"ca_key,omitempty"`
	CACert   []byte           `json:"ca_cert,omitempty"` // DER
	State    string           `json:"state,omitempty"`
	Signer   int              `json:"signer,omitempty"`
	Elapsed  time.Duration    `json:"elapsed_ns,omitempty"`
	Messages *tca.DKGMessages `json:"messages,omitempty"`
	// cert_request's result:
	Leaf     []byte   `json:"leaf,omitempty"` // DER
	SPIFFEID string   `json:"spiffe_id,omitempty"`
	Signers  []string `json:"signers,omitempty"`
	Attempts int      `json:"attempts,omitempty"`
	// Installed is the file the node wrote and presents the certificate
	// from (its --cert), when it runs with one.
	Installed string `json:"installed,omitempty"`
	// ca_approve, ca_approvals:
	Approvals []tca.Approval `json:"approvals,omitempty"`
}

// approveArgs is what `ca approve` and `ca revoke` send the node.
type approveArgs struct {
	Identity pki.Identity `json:"identity"`
	Workload string       `json:"workload,omitempty"`
}

// dkgArgs is what `ca dkg` sends the node.
type dkgArgs struct {
	TrustDomain string         `json:"trust_domain"`
	Threshold   int            `json:"threshold"`
	Signers     []pki.Identity `json:"signers"`
	State       string         `json:"state"` // absolute path the node writes
	Timeout     time.Duration  `json:"timeout_ns"`
}

func caCommand(controlFlag cli.Flag, stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "ca",
		Usage: "the threshold CA: key generation among signers named by identity",
		Subcommands: []*cli.Command{{
			Name:  "dkg",
			Usage: "run this node's part in a K-of-N key generation (every signer runs it, in any order, within --timeout)",
			Flags: []cli.Flag{
				controlFlag,
				&cli.StringFlag{Name: "trust-domain", Required: true, Usage: "the CA's SPIFFE trust domain, e.g. prod.example.com"},
				&cli.IntFlag{Name: "threshold", Required: true, Usage: "K: signers needed to sign a certificate (2..N)"},
				&cli.StringFlag{Name: "signers", Required: true, Usage: "the N >= 3 signers' identities, comma-separated (this node among them)"},
				&cli.StringFlag{Name: "state", Required: true, Usage: "file to create with this signer's encrypted state (mode 0600; never overwritten)"},
				&cli.StringFlag{Name: "ca-cert", Required: true, Usage: "file to write the CA certificate to (PEM)"},
				&cli.DurationFlag{Name: "timeout", Value: 3 * time.Minute, Usage: "how long to wait for the other signers"},
			},
			Action: func(c *cli.Context) error { return caDKG(c, stdout, stderr) },
		}, {
			Name:      "approve",
			Usage:     "make this signer sign certificates for IDENTITY (a request succeeds only when K signers approved it)",
			ArgsUsage: "IDENTITY",
			Flags:     []cli.Flag{controlFlag, &cli.StringFlag{Name: "workload", Usage: "the only workload path to sign for it (default: none)"}},
			Action:    func(c *cli.Context) error { return caApprove(c, "ca_approve", stdout) },
		}, {
			Name:      "revoke",
			Usage:     "stop this signer from signing for IDENTITY: its renewals fail once fewer than K signers approve it, and members disconnect it when its certificate expires",
			ArgsUsage: "IDENTITY",
			Flags:     []cli.Flag{controlFlag},
			Action:    func(c *cli.Context) error { return caApprove(c, "ca_revoke", stdout) },
		}, {
			Name:  "approvals",
			Usage: "list the identities this signer signs for",
			Flags: []cli.Flag{controlFlag, &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
			Action: func(c *cli.Context) error {
				ctx, cancel := context.WithTimeout(c.Context, 20*time.Second)
				defer cancel()
				done, err := streamResult(ctx, c.String("control"), "ca_approvals", nil, io.Discard)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printIndented(stdout, done.Approvals)
				}
				for _, ap := range done.Approvals {
					fmt.Fprintf(stdout, "%s %s %s\n", ap.Identity, ap.ApprovedAt.Format(time.RFC3339), orNone(ap.Workload))
				}
				return nil
			},
		}},
	}
}

// caApprove runs `ca approve` and `ca revoke`. Their flags may also follow
// IDENTITY, as the usage `ca approve IDENTITY [--workload PATH]` writes
// them (the flag parser stops at the first argument).
func caApprove(c *cli.Context, cmd string, stdout io.Writer) error {
	a := approveArgs{Workload: c.String("workload")}
	sock := c.String("control")
	args := c.Args().Slice()
	var idText string
	for i := 0; i < len(args); i++ {
		name, val, hasVal := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		switch {
		case !strings.HasPrefix(args[i], "-") && idText == "":
			idText = args[i]
			continue
		case !strings.HasPrefix(args[i], "-"):
			return fmt.Errorf("%s takes one IDENTITY", c.Command.FullName())
		case name == "workload" && cmd == "ca_approve", name == "control":
		default:
			return fmt.Errorf("%s: unknown flag %s", c.Command.FullName(), args[i])
		}
		if !hasVal {
			if i+1 >= len(args) {
				return fmt.Errorf("--%s needs a value", name)
			}
			i++
			val = args[i]
		}
		if name == "workload" {
			a.Workload = val
		} else {
			sock = val
		}
	}
	if idText == "" {
		return fmt.Errorf("%s takes one IDENTITY (64 hex)", c.Command.FullName())
	}
	id, err := pki.ParseIdentity(idText)
	if err != nil {
		return fmt.Errorf("IDENTITY: %v", err)
	}
	a.Identity = id
	if a.Workload != "" {
		if err := (pki.SPIFFEConfig{TrustDomain: "x", Workload: a.Workload}).Check(); err != nil {
			return fmt.Errorf("--workload: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(c.Context, 20*time.Second)
	defer cancel()
	done, err := streamResult(ctx, sock, cmd, a, io.Discard)
	if err != nil {
		return err
	}
	if cmd == "ca_revoke" {
		fmt.Fprintf(stdout, "revoked %s: this signer signs no more certificates for it; those already signed stay valid until they expire\n", id)
		return nil
	}
	wl := ""
	if len(done.Approvals) == 1 && done.Approvals[0].Workload != "" {
		wl = " workload " + done.Approvals[0].Workload
	}
	fmt.Fprintf(stdout, "approved %s%s\n", id, wl)
	return nil
}

func caDKG(c *cli.Context, stdout, stderr io.Writer) error {
	a := dkgArgs{TrustDomain: c.String("trust-domain"), Threshold: c.Int("threshold"), Timeout: c.Duration("timeout")}
	if err := (pki.SPIFFEConfig{TrustDomain: a.TrustDomain}).Check(); err != nil {
		return fmt.Errorf("--trust-domain: %v", err)
	}
	for _, s := range strings.Split(c.String("signers"), ",") {
		id, err := pki.ParseIdentity(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--signers: %v", err)
		}
		a.Signers = append(a.Signers, id)
	}
	if n := len(a.Signers); n < 3 || n > tca.MaxSigners || a.Threshold < 2 || a.Threshold > n {
		return fmt.Errorf("--threshold %d with %d signers: need 3 to %d signers and a threshold from 2 to the number of signers", a.Threshold, n, tca.MaxSigners)
	}
	if a.Timeout <= 0 {
		return errors.New("--timeout must be positive")
	}
	var err error
	if a.State, err = filepath.Abs(c.String("state")); err != nil {
		return err
	}
	if _, err := os.Lstat(a.State); err == nil {
		return fmt.Errorf("--state %s already exists: refusing to overwrite a signer's key share (choose another path)", a.State)
	}
	caPath := c.String("ca-cert")
	fmt.Fprintf(stderr, "running a %d-of-%d DKG for %s: every signer must run `korium-tun ca dkg` with the same --trust-domain, --threshold and --signers within %v\n",
		a.Threshold, len(a.Signers), a.TrustDomain, a.Timeout)
	ctx, cancel := context.WithTimeout(c.Context, a.Timeout+30*time.Second)
	defer cancel()
	done, err := streamResult(ctx, c.String("control"), "ca_dkg", a, stderr)
	if err != nil {
		return err
	}
	if err := tca.WriteCertPEM(caPath, done.CACert); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ca_key %s\nsigner %d of %d\nstate %s\nca_cert %s\nelapsed %s\n", done.CAKey, done.Signer, len(a.Signers), done.State, caPath, done.Elapsed.Round(time.Millisecond))
	if m := done.Messages; m != nil {
		fmt.Fprintf(stdout, "messages round1_broadcasts=%d round2_rpcs=%d ca_share_rpcs=%d\n", m.Round1Published, m.SharesSent, m.CASharesSent)
	}
	fmt.Fprintf(stderr, "the node now signs for %s; restart it with `korium-tun up --ca-signer %s` to keep signing\n", a.TrustDomain, done.State)
	return nil
}

var errStreamDone = errors.New("stream done")

// caControl registers the CA streams on a running node.
//
// A failure is sent as an "error" event rather than returned: the control
// stream's own final error line is written after its last event's write
// deadline (10 s), which a ceremony or a request easily outlasts.
func caControl(node *overlay.Node, ctl *control.Server) {
	ctl.HandleStream("ca_dkg", errorEvent(caDKGStream(node)))
	ctl.HandleStream("cert_request", errorEvent(certRequestStream(node)))
	ctl.HandleStream("ca_approve", errorEvent(approveStream(node, false)))
	ctl.HandleStream("ca_revoke", errorEvent(approveStream(node, true)))
	ctl.HandleStream("ca_approvals", errorEvent(func(_ context.Context, _ json.RawMessage, emit func(any) error) error {
		list, err := node.CAApprovals()
		if err != nil {
			return notSignerHint(err)
		}
		return emit(caEvent{Kind: "done", Approvals: list})
	}))
}

func notSignerHint(err error) error {
	if strings.Contains(err.Error(), "not a CA signer") {
		return fmt.Errorf("%v: run this on a signer's node (`korium-tun up --ca-signer STATE`)", err)
	}
	return err
}

func approveStream(node *overlay.Node, revoke bool) control.StreamHandler {
	return func(_ context.Context, raw json.RawMessage, emit func(any) error) error {
		var a approveArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return errors.New("malformed arguments")
		}
		if err := a.Identity.Check(); err != nil {
			return err
		}
		if revoke {
			if err := node.CARevoke(a.Identity); err != nil {
				return notSignerHint(err)
			}
			return emit(caEvent{Kind: "done"})
		}
		ap, err := node.CAApprove(a.Identity, a.Workload)
		if err != nil {
			return notSignerHint(err)
		}
		return emit(caEvent{Kind: "done", Approvals: []tca.Approval{ap}})
	}
}

// caConfig is the node's tca.Config from up's flags: a signer keeps its
// approvals beside its state.
func caConfig(c *cli.Context) tca.Config {
	var cc tca.Config
	if p := c.String("ca-signer"); p != "" {
		cc.ApprovalsFile = approvalsPath(p)
	}
	return cc
}

func errorEvent(h control.StreamHandler) control.StreamHandler {
	return func(ctx context.Context, raw json.RawMessage, emit func(any) error) error {
		if err := h(ctx, raw, emit); err != nil {
			return emit(caEvent{Kind: "error", Text: err.Error()})
		}
		return nil
	}
}

func caDKGStream(node *overlay.Node) control.StreamHandler {
	return func(ctx context.Context, raw json.RawMessage, emit func(any) error) error {
		var a dkgArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return errors.New("ca_dkg: malformed arguments")
		}
		if !filepath.IsAbs(a.State) {
			return errors.New("ca_dkg: the state path must be absolute")
		}
		if _, err := os.Lstat(a.State); err == nil {
			return fmt.Errorf("%s already exists: refusing to overwrite a signer's key share", a.State)
		}
		if a.Timeout <= 0 || a.Timeout > time.Hour {
			a.Timeout = 3 * time.Minute
		}
		emit(caEvent{Kind: "waiting", Text: fmt.Sprintf("node %s is signer of %d; waiting up to %v for the others", node.Identity().Short(), len(a.Signers), a.Timeout)})
		dctx, cancel := context.WithTimeout(ctx, a.Timeout)
		defer cancel()
		res, err := node.RunCADKG(dctx, tca.DKGConfig{TrustDomain: a.TrustDomain, Threshold: a.Threshold, Signers: a.Signers})
		if err != nil {
			return err
		}
		if err := node.SaveCASignerState(a.State, res.State); err != nil {
			return err
		}
		if node.CASignerState() == nil {
			if err := node.SetCASigner(res.State, approvalsPath(a.State)); err != nil {
				return err
			}
		}
		m := res.Messages
		return emit(caEvent{Kind: "done", CAKey: hex.EncodeToString(res.State.CA.GroupKey), CACert: res.State.CA.DER, State: a.State,
			Signer: int(res.State.ID), Elapsed: res.Elapsed, Messages: &m})
	}
}

func certRequestStream(node *overlay.Node) control.StreamHandler {
	return func(ctx context.Context, raw json.RawMessage, emit func(any) error) error {
		var a certArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return errors.New("cert_request: malformed arguments")
		}
		leafFile := node.MembersLeafFile()
		if a.NodeWrites && leafFile == "" {
			return errors.New("the node runs without --cert: give --out FILE (or run the node with --ca-cert and --cert)")
		}
		rc := tca.RequestConfig{TrustDomain: a.TrustDomain, Workload: a.Workload, Validity: a.Validity}
		if a.CAKey != "" {
			k, err := hex.DecodeString(a.CAKey)
			if err != nil || len(k) != 32 {
				return errors.New("--ca-key: want 64 hex characters")
			}
			rc.CAKey = k
		}
		td := a.TrustDomain
		if td == "" {
			td = node.TrustDomain()
		}
		emit(caEvent{Kind: "waiting", Text: fmt.Sprintf("asking the signers of %s for a certificate of %s", td, node.Identity().Short())})
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		cert, err := node.RequestCACertificate(rctx, rc)
		if err != nil {
			return err
		}
		ev := caEvent{Kind: "done", Leaf: cert.DER, CACert: cert.CA.DER, CAKey: hex.EncodeToString(cert.CA.GroupKey), SPIFFEID: cert.SPIFFEID.String(), Attempts: cert.Attempts}
		// A node with a CA presents the certificate at once and renews it.
		switch err := node.InstallLeaf(cert.DER); {
		case err == nil:
			ev.Installed = leafFile
			if ev.Installed == "" {
				ev.Installed = "(in memory: the node runs without --cert)"
			}
		case errors.Is(err, overlay.ErrNoMembership):
		default:
			if a.NodeWrites {
				return fmt.Errorf("the node did not take the certificate: %v", err)
			}
			ev.Text = "the node does not present this certificate: " + err.Error()
		}
		for _, s := range cert.Signers {
			ev.Signers = append(ev.Signers, s.String())
		}
		return emit(ev)
	}
}

// streamResult runs one of the CA streams and returns its "done" event,
// printing "waiting" events to stderr.
func streamResult(ctx context.Context, path, cmd string, args any, stderr io.Writer) (*caEvent, error) {
	var done *caEvent
	var failed error
	err := control.Stream(ctx, path, cmd, args, func(raw json.RawMessage) error {
		var ev caEvent
		if err := json.Unmarshal(raw, &ev); err != nil {
			return err
		}
		switch ev.Kind {
		case "waiting":
			fmt.Fprintln(stderr, ev.Text)
		case "done":
			done = &ev
			return errStreamDone
		case "error":
			failed = errors.New(ev.Text)
			return errStreamDone
		}
		return nil
	})
	switch {
	case failed != nil:
		return nil, failed
	case err != nil && !errors.Is(err, errStreamDone):
		return nil, err
	case done == nil:
		return nil, errors.New("the node closed the stream without a result")
	}
	return done, nil
}

// approvalsPath is where a signer whose state is at state keeps its
// approvals.
func approvalsPath(state string) string { return state + ".approvals" }

// loadCASigner reads --ca-signer for up.
func loadCASigner(path string, kp *pki.Keypair) (*tca.SignerState, error) {
	if path == "" {
		return nil, nil
	}
	st, err := tca.LoadState(path, kp)
	if err != nil {
		return nil, fmt.Errorf("--ca-signer: %v (it must be the file `korium-tun ca dkg --state` wrote for this node's key)", err)
	}
	return st, nil
}

// checkSPIFFEFlags checks up's --trust-domain and --workload, and the
// member flags that need nothing but each other (loadMembers checks the
// rest once the key is loaded).
func checkSPIFFEFlags(c *cli.Context) error {
	if (c.String("cert") != "" || c.Bool("members-only")) && c.String("ca-cert") == "" && c.String("ca-signer") == "" {
		return errors.New("--cert and --members-only need --ca-cert FILE (the CA certificate `ca dkg` wrote)")
	}
	if p := c.String("ca-cert"); p != "" {
		der, err := tca.ReadCertPEM(p)
		if err != nil {
			return fmt.Errorf("--ca-cert: %v", err)
		}
		if _, err := tca.ParseCA(der); err != nil {
			return fmt.Errorf("--ca-cert %s: %v", p, err)
		}
	}
	td, wl := c.String("trust-domain"), c.String("workload")
	if td == "" {
		if wl != "" {
			return errors.New("--workload needs --trust-domain")
		}
		return nil
	}
	if err := (pki.SPIFFEConfig{TrustDomain: td, Workload: wl}).Check(); err != nil {
		return fmt.Errorf("--trust-domain/--workload: %v", err)
	}
	return nil
}
