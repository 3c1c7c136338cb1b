//go:build linux

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/korium/korium-tun/pki"
)

// TestCAFlagMistakes: each mistake in ca dkg, cert request, cert show and
// up's SPIFFE flags is one line that says what to fix, before anything
// talks to a node.
func TestCAFlagMistakes(t *testing.T) {
	var ids []string
	for i := 0; i < 3; i++ {
		kp, _ := pki.GenerateKeypair(context.Background(), 0)
		ids = append(ids, kp.Identity().String())
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "none.sock")
	existing := filepath.Join(dir, "exists")
	os.WriteFile(existing, []byte("x"), 0o600)
	dkg := func(extra ...string) []string {
		return append([]string{"ca", "dkg", "--control", sock, "--trust-domain", "td", "--state", filepath.Join(dir, "s"), "--ca-cert", filepath.Join(dir, "ca.pem")}, extra...)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{dkg("--threshold", "1", "--signers", strings.Join(ids, ",")), "threshold from 2"},
		{dkg("--threshold", "4", "--signers", strings.Join(ids, ",")), "threshold from 2"},
		{dkg("--threshold", "2", "--signers", strings.Join(ids[:2], ",")), "need 3"},
		{dkg("--threshold", "2", "--signers", ids[0]+","+ids[1]+",nothex"), "--signers"},
		{append(dkg("--threshold", "2", "--signers", strings.Join(ids, ",")), "--state", existing), "refusing to overwrite"},
		{[]string{"ca", "dkg", "--control", sock, "--trust-domain", "Bad/TD", "--threshold", "2", "--signers", strings.Join(ids, ","), "--state", "s", "--ca-cert", "c"}, "--trust-domain"},
		{dkg("--threshold", "2", "--signers", strings.Join(ids, ",")), "no running node"},
		{[]string{"cert", "request", "--control", sock, "--trust-domain", "td", "--workload", "a/../b", "--out", "x"}, "--workload"},
		{[]string{"cert", "request", "--control", sock, "--trust-domain", "td", "--validity", "48h", "--out", "x"}, "at most 24h"},
		{[]string{"cert", "request", "--control", sock, "--trust-domain", "td", "--ca-key", "zz", "--out", "x"}, "--ca-key"},
		{[]string{"cert", "show"}, "one certificate FILE"},
		{[]string{"cert", "show", existing, "--bogus"}, "unknown flag"},
		{[]string{"cert", "show", existing, "--ca-cert"}, "needs a FILE"},
		{[]string{"cert", "show", existing}, "no PEM CERTIFICATE"},
		{[]string{"up", "--workload", "w"}, "--workload needs --trust-domain"},
		{[]string{"up", "--members-only"}, "need --ca-cert"},
		{[]string{"up", "--cert", "x.pem"}, "need --ca-cert"},
		{[]string{"up", "--ca-cert", existing}, "no PEM CERTIFICATE"},
		{[]string{"ca", "approve", "--control", sock}, "takes one IDENTITY"},
		{[]string{"ca", "approve", "--control", sock, "nothex"}, "IDENTITY"},
		{[]string{"ca", "approve", "--control", sock, ids[0], "--workload", "a/../b"}, "--workload"},
		{[]string{"ca", "approve", "--control", sock, ids[0], ids[1]}, "one IDENTITY"},
		{[]string{"ca", "revoke", "--control", sock, ids[0], "--workload", "w"}, "unknown flag"},
		{[]string{"ca", "approve", ids[0], "--control", sock}, "no running node"},
		{[]string{"cert", "request", "--control", sock}, "no running node"},
		{[]string{"up", "--trust-domain", "UPPER"}, "--trust-domain"},
	} {
		_, err := run(t, c.args...)
		oneLine(t, err, c.want)
	}
}
