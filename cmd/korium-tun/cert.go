package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/tca"
)

// certArgs is what `cert request` sends the node.
type certArgs struct {
	TrustDomain string        `json:"trust_domain"`
	Workload    string        `json:"workload,omitempty"`
	Validity    time.Duration `json:"validity_ns,omitempty"`
	CAKey       string        `json:"ca_key,omitempty"`
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
				Usage: "get this node's certificate from the signers of a trust domain, through the running node",
				Flags: []cli.Flag{
					controlFlag,
					&cli.StringFlag{Name: "trust-domain", Required: true, Usage: "the CA's trust domain"},
					&cli.StringFlag{Name: "workload", Usage: "workload path after the identity (e.g. api or team/api)"},
					&cli.StringFlag{Name: "out", Required: true, Usage: "file to write the certificate to (PEM)"},
					&cli.StringFlag{Name: "ca-cert", Usage: "also write the CA certificate it chains to (PEM)"},
					&cli.DurationFlag{Name: "validity", Value: time.Hour, Usage: "certificate lifetime (the signers refuse more than 24h)"},
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
	a := certArgs{TrustDomain: c.String("trust-domain"), Workload: c.String("workload"), Validity: c.Duration("validity"), CAKey: c.String("ca-key")}
	if err := (pki.SPIFFEConfig{TrustDomain: a.TrustDomain, Workload: a.Workload}).Check(); err != nil {
		return fmt.Errorf("--trust-domain/--workload: %v", err)
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
	if err := tca.WriteCertPEM(c.String("out"), done.Leaf); err != nil {
		return err
	}
	if p := c.String("ca-cert"); p != "" {
		if err := tca.WriteCertPEM(p, done.CACert); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "spiffe_id %s\nca_key %s\nsigners %d\nattempts %d\nout %s\n", done.SPIFFEID, done.CAKey, len(done.Signers), done.Attempts, c.String("out"))
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
