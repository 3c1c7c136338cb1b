package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
)

// certArgs is what `cert request` sends the node.
type certArgs struct {
	TrustDomain string        `json:"trust_domain,omitempty"` // "": the node's
	Workload    string        `json:"workload,omitempty"`
	Validity    time.Duration `json:"validity_ns,omitempty"`
	CAKey       string        `json:"ca_key,omitempty"`
	// NodeWrites: no --out; the node must run with --cert and writes it.
	NodeWrites bool `json:"node_writes,omitempty"`
}

// certInfo is what `cert show` prints.
type certInfo struct {
	SPIFFEID    string    `json:"spiffe_id"`
	Identity    string    `json:"identity"`
	Workload    string    `json:"workload,omitempty"`
	Serial      string    `json:"serial"`
	Issuer      string    `json:"issuer"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	IsCA        bool      `json:"is_ca"`
	CAKey       string    `json:"ca_key,omitempty"`
	Verified    *bool     `json:"verified,omitempty"` // with --ca-cert
	VerifyError string    `json:"verify_error,omitempty"`
}

func certCommand(controlFlag, jsonFlag cli.Flag, stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "cert",
		Usage: "X509-SVIDs from the threshold CA",
		Subcommands: []*cli.Command{
			{
				Name:  "request",
				Usage: "get this node's certificate from the signers of a trust domain, through the running node (a node run with --ca-cert and --cert starts presenting it at once and renews it)",
				Flags: []cli.Flag{
					controlFlag,
					&cli.StringFlag{Name: "trust-domain", Usage: "the CA's trust domain (default: the node's --trust-domain)"},
					&cli.StringFlag{Name: "workload", Usage: "workload path after the identity (e.g. api or team/api)"},
					&cli.StringFlag{Name: "out", Usage: "file to write the certificate to (PEM; default: the node's --cert, which the node writes)"},
					&cli.StringFlag{Name: "ca-cert", Usage: "also write the CA certificate it chains to (PEM)"},
					&cli.DurationFlag{Name: "validity", Value: 24 * time.Hour, Usage: "certificate lifetime (the signers refuse more than 24h); renewals keep it"},
					&cli.StringFlag{Name: "ca-key", Usage: "pin the CA's key (64 hex, as `ca dkg` printed)"},
				},
				Action: func(c *cli.Context) error { return certRequest(c, stdout, stderr) },
			},
			{
				Name:      "show",
				Usage:     "print a certificate's SPIFFE ID, identity and validity, and whether it verifies against a CA",
				ArgsUsage: "FILE",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "ca-cert", Usage: "CA certificate (PEM) to verify against"}, jsonFlag},
				Action:    func(c *cli.Context) error { return certShow(c, stdout) },
			},
		},
	}
}

func certRequest(c *cli.Context, stdout, stderr io.Writer) error {
	a := certArgs{TrustDomain: c.String("trust-domain"), Workload: c.String("workload"), Validity: c.Duration("validity"), CAKey: c.String("ca-key"), NodeWrites: c.String("out") == ""}
	if a.TrustDomain != "" {
		if err := (pki.SPIFFEConfig{TrustDomain: a.TrustDomain, Workload: a.Workload}).Check(); err != nil {
			return fmt.Errorf("--trust-domain/--workload: %v", err)
		}
	}
	if a.Validity <= 0 || a.Validity > 24*time.Hour {
		return fmt.Errorf("--validity %v: want more than 0 and at most 24h", a.Validity)
	}
	if a.CAKey != "" {
		if k, err := hex.DecodeString(a.CAKey); err != nil || len(k) != 32 {
			return errors.New("--ca-key: want the CA key as 64 hex characters")
		}
	}
	ctx, cancel := context.WithTimeout(c.Context, 3*time.Minute)
	defer cancel()
	done, err := streamResult(ctx, c.String("control"), "cert_request", a, stderr)
	if err != nil {
		return err
	}
	out := c.String("out")
	if out != "" {
		if err := tca.WriteCertPEM(out, done.Leaf); err != nil {
			return err
		}
	}
	if p := c.String("ca-cert"); p != "" {
		if err := tca.WriteCertPEM(p, done.CACert); err != nil {
			return err
		}
	}
	if out == "" {
		out = done.Installed
	}
	fmt.Fprintf(stdout, "spiffe_id %s\nca_key %s\nsigners %d\nattempts %d\nout %s\n", done.SPIFFEID, done.CAKey, len(done.Signers), done.Attempts, out)
	if done.Installed != "" {
		fmt.Fprintf(stdout, "installed %s\n", done.Installed)
	}
	if done.Text != "" {
		fmt.Fprintln(stderr, done.Text)
	}
	return nil
}

func certShow(c *cli.Context, stdout io.Writer) error {
	file, caPath, asJSON, err := showArgs(c)
	if err != nil {
		return err
	}
	der, err := tca.ReadCertPEM(file)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("%s: not a certificate: %v", file, err)
	}
	info := certInfo{Serial: leaf.SerialNumber.Text(16), Issuer: leaf.Issuer.String(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, IsCA: leaf.IsCA}
	if sid, found, err := pki.ExtractSPIFFEID(leaf); err == nil && found {
		info.SPIFFEID = sid.String()
		if id, wl, err := pki.ValidateSPIFFEID(sid.String(), sid.TrustDomain().Name()); err == nil {
			info.Identity, info.Workload = id.String(), wl
		}
	}
	if p := caPath; p != "" {
		caDER, err := tca.ReadCertPEM(p)
		if err != nil {
			return err
		}
		ca, err := tca.ParseCA(caDER)
		if err != nil {
			return fmt.Errorf("--ca-cert %s: %v", p, err)
		}
		info.CAKey = hex.EncodeToString(ca.GroupKey)
		ok := true
		if _, _, err := tca.VerifyLeaf(leaf, ca, time.Now()); err != nil {
			ok, info.VerifyError = false, err.Error()
		}
		info.Verified = &ok
	}
	if asJSON {
		if err := printIndented(stdout, info); err != nil {
			return err
		}
	} else {
		printCertInfo(stdout, info)
	}
	if info.Verified != nil && !*info.Verified {
		return errors.New("the certificate does not verify against the CA")
	}
	return nil
}

func printCertInfo(stdout io.Writer, info certInfo) {
	fmt.Fprintf(stdout, "spiffe_id  %s\nidentity   %s\nserial     %s\nissuer     %s\nnot_before %s\nnot_after  %s\n",
		orNone(info.SPIFFEID), orNone(info.Identity), info.Serial, info.Issuer, info.NotBefore.Format(time.RFC3339), info.NotAfter.Format(time.RFC3339))
	if info.Verified != nil {
		if *info.Verified {
			fmt.Fprintf(stdout, "verified   yes (CA %s)\n", info.CAKey)
		} else {
			fmt.Fprintf(stdout, "verified   NO: %s\n", info.VerifyError)
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// showArgs takes cert show's FILE and its flags, which may also follow
// FILE as the usage `cert show FILE [--ca-cert FILE] [--json]` writes them
// (the flag parser stops at the first argument).
func showArgs(c *cli.Context) (file, caPath string, asJSON bool, err error) {
	caPath, asJSON = c.String("ca-cert"), c.Bool("json")
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--json" || a == "-json":
			asJSON = true
		case a == "--ca-cert" || a == "-ca-cert":
			if i+1 >= len(args) {
				return "", "", false, errors.New("--ca-cert needs a FILE")
			}
			i++
			caPath = args[i]
		case strings.HasPrefix(a, "--ca-cert="):
			caPath = strings.TrimPrefix(a, "--ca-cert=")
		case strings.HasPrefix(a, "-") && a != "-":
			return "", "", false, fmt.Errorf("cert show: unknown flag %s", a)
		case file != "":
			return "", "", false, errors.New("cert show takes one certificate FILE (PEM)")
		default:
			file = a
		}
	}
	if file == "" {
		return "", "", false, errors.New("cert show takes one certificate FILE (PEM)")
	}
	return file, caPath, asJSON, nil
}

// memberFlags are up's flags for members-only networks.
func memberFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ca-cert", Usage: "the threshold CA's certificate (PEM, from `ca dkg`): members' certificates chain to it (default with --ca-signer: the signer's CA)"},
		&cli.StringFlag{Name: "cert", Usage: "this node's own certificate from the CA (PEM): presented in every handshake and renewed in place; if missing, `cert request` writes it"},
		&cli.BoolFlag{Name: "members-only", Usage: "accept only peers with a valid certificate from --ca-cert (a signer also lets others in to ask for one)"},
	}
}

// loadMembers reads up's --ca-cert, --cert and --members-only.
func loadMembers(c *cli.Context, kp *pki.Keypair, signer *tca.SignerState, stderr io.Writer) (overlay.MembersConfig, error) {
	var mc overlay.MembersConfig
	caPath, certPath, only := c.String("ca-cert"), c.String("cert"), c.Bool("members-only")
	if caPath == "" {
		if certPath == "" && !only {
			return mc, nil
		}
		if signer == nil {
			return mc, errors.New("--cert and --members-only need --ca-cert FILE (the CA certificate `ca dkg` wrote)")
		}
		mc.CA = signer.CA
	} else {
		der, err := tca.ReadCertPEM(caPath)
		if err != nil {
			return mc, fmt.Errorf("--ca-cert: %v", err)
		}
		if mc.CA, err = tca.ParseCA(der); err != nil {
			return mc, fmt.Errorf("--ca-cert %s: %v", caPath, err)
		}
		if signer != nil && !bytes.Equal(signer.CA.GroupKey, mc.CA.GroupKey) {
			return mc, fmt.Errorf("--ca-cert %s is another CA than the one --ca-signer signs for", caPath)
		}
	}
	if td := c.String("trust-domain"); td != "" && td != mc.CA.TrustDomain.Name() {
		return mc, fmt.Errorf("--trust-domain %s, but the CA is of %s", td, mc.CA.TrustDomain.Name())
	}
	mc.MembersOnly, mc.LeafFile = only, certPath
	if certPath == "" {
		return mc, nil
	}
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "no certificate at %s yet: get one with `korium-tun cert request` (the node writes it there and presents it)\n", certPath)
		return mc, nil
	}
	der, err := tca.ReadCertPEM(certPath)
	if err != nil {
		return mc, fmt.Errorf("--cert: %v", err)
	}
	_, leaf, err := pki.LeafCertificate(kp, der)
	if err == nil {
		_, err = pki.VerifyMember(leaf, mc.CA.Cert, mc.CA.TrustDomain, leaf.NotAfter)
	}
	if err != nil {
		return mc, fmt.Errorf("--cert %s: %v (it must be this node's certificate from `korium-tun cert request`, of the CA in --ca-cert)", certPath, err)
	}
	if time.Now().After(leaf.NotAfter) {
		fmt.Fprintf(stderr, "the certificate in %s expired at %s: the node asks the signers for a new one\n", certPath, leaf.NotAfter.Format(time.RFC3339))
	}
	mc.Leaf = der
	return mc, nil
}

// printMembers adds the membership lines to `status`.
func printMembers(w io.Writer, m *overlay.MembersStatus) {
	if m == nil {
		return
	}
	state := "not a member (no valid certificate)"
	if m.Member {
		state = fmt.Sprintf("member %s, certificate until %s (renewal at %s)", m.SPIFFEID, m.NotAfter.Format(time.RFC3339), m.RenewAt.Format(time.RFC3339))
	}
	only := "accepts everyone"
	if m.MembersOnly {
		only = "members only"
	}
	fmt.Fprintf(w, "members: %s; %s; %d members and %d enrollees connected\n", state, only, m.Members, m.Enrollees)
	var refused []string
	for k, v := range m.Refused {
		if v > 0 {
			refused = append(refused, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(refused) > 0 {
		sort.Strings(refused)
		fmt.Fprintf(w, "members: refused %s\n", strings.Join(refused, " "))
	}
}
