//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/korium/korium-tun/pki"
)

// run executes the CLI in-process and returns stdout and the error line.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errw bytes.Buffer
	err := newApp(&out, &errw).Run(append([]string{"korium-tun"}, args...))
	return out.String(), err
}

// TestMain lets a test re-run this binary as the CLI (KT_RUN_MAIN=1), e.g.
// as an unprivileged user.
func TestMain(m *testing.M) {
	if os.Getenv("KT_RUN_MAIN") == "1" {
		os.Args = append([]string{"korium-tun"}, strings.Fields(os.Getenv("KT_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func oneLine(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", want)
	}
	if msg := err.Error(); !strings.Contains(msg, want) || strings.Contains(msg, "\n") {
		t.Fatalf("error %q: want one line mentioning %q", msg, want)
	}
}

func TestKeygenAndID(t *testing.T) {
	key := filepath.Join(t.TempDir(), "k")
	out, err := run(t, "keygen", "--key", key, "--pow-bits", "6")
	if err != nil || !strings.HasPrefix(out, "identity ") {
		t.Fatalf("keygen: %q %v", out, err)
	}
	if st, _ := os.Stat(key); st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %o", st.Mode().Perm())
	}
	before, _ := os.ReadFile(key)
	out, err = run(t, "id", "--key", key, "--json")
	var id struct{ Identity, Address string }
	if err != nil || json.Unmarshal([]byte(out), &id) != nil || len(id.Identity) != 64 || !strings.HasPrefix(id.Address, "fd00:c0f1:") {
		t.Fatalf("id --json: %q %v", out, err)
	}
	_, err = run(t, "keygen", "--key", key)
	oneLine(t, err, "already exists")
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Fatal("keygen changed an existing key file")
	}
	os.Chmod(key, 0o644)
	_, err = run(t, "id", "--key", key)
	oneLine(t, err, "chmod 600")
	_, err = run(t, "id", "--key", filepath.Join(t.TempDir(), "missing"))
	oneLine(t, err, "keygen")
	_, err = run(t, "keygen", "--key", filepath.Join(t.TempDir(), "x"), "--pow-bits", "99")
	oneLine(t, err, "--pow-bits")
}

func TestUpRejectsMistakesBeforeTouchingAnything(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	cases := map[string]struct {
		args []string
		want string
	}{
		"bootstrap":  {[]string{"--bootstrap", "nothex@1.2.3.4:5"}, "--bootstrap"},
		"bootstrap2": {[]string{"--bootstrap", strings.Repeat("a", 64) + "@host:5"}, "IP:PORT"},
		"mtu":        {[]string{"--mtu", "9000"}, "--mtu"},
		"pow":        {[]string{"--pow-bits", "-1"}, "--pow-bits"},
		"log level":  {[]string{"--log-level", "loud"}, "--log-level"},
		"flag":       {[]string{"--bogus"}, "bogus"},
	}
	for name, c := range cases {
		_, err := run(t, append([]string{"up", "--key", key, "--control", filepath.Join(dir, "c.sock")}, c.args...)...)
		if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		oneLine(t, err, c.want)
	}
	if _, err := os.Stat(key); err == nil {
		t.Fatal("a key was created although the flags were wrong")
	}
}

func TestUpPortInUse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: `up` checks for root before the port")
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dir := t.TempDir()
	_, err = run(t, "up", "--key", filepath.Join(dir, "k"), "--pow-bits", "4", "--listen", pc.LocalAddr().String(), "--control", filepath.Join(dir, "c.sock"))
	oneLine(t, err, "already in use")
}

func TestUpNeedsRoot(t *testing.T) {
	args := "up --pow-bits 4 --key /nonexistent/k"
	bin := os.Args[0]
	if os.Geteuid() == 0 {
		// The test binary's directory is private to root: copy it where
		// an unprivileged user can execute it.
		dir, err := os.MkdirTemp("", "kt-noroot-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755)
		data, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(dir, "korium-tun.test")
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "KT_RUN_MAIN=1", "KT_ARGS="+args)
	if os.Geteuid() == 0 {
		// Run as nobody to see what an unprivileged user sees.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v (stderr %q)", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "needs root") || !strings.Contains(lines[0], "sudo") {
		t.Fatalf("stderr %q: want one line saying root is needed", stderr.String())
	}
}

func TestStatusWithoutNode(t *testing.T) {
	_, err := run(t, "status", "--control", filepath.Join(t.TempDir(), "none.sock"))
	oneLine(t, err, "korium-tun up")
}

// A peer's chat text can never drive the terminal: control characters
// (escape sequences, newlines) are replaced and invalid UTF-8 repaired.
func TestSanitize(t *testing.T) {
	cases := map[string]string{
		"hello":                 "hello",
		"red\x1b[31mtext":       "red?[31mtext",
		"two\nlines\r":          "two?lines?",
		"bell\a":                "bell?",
		"bad\xffutf8":           "bad?utf8",
		"héllo ✓":               "héllo ✓",
		"\u009b31m (8-bit CSI)": "?31m (8-bit CSI)",
	}
	for in, want := range cases {
		if got := sanitize([]byte(in)); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
	if got := sanitize(bytes.Repeat([]byte("x"), 10*maxChatLine)); len(got) != maxChatLine {
		t.Errorf("long text kept %d bytes", len(got))
	}
}

// --pow-bits 0 means no proof of work; overlay.Config reads 0 as the
// default (24), so up and chat must both translate it.
func TestOverlayPoW(t *testing.T) {
	for bits, want := range map[int]int{0: -1, 4: 4, pki.DefaultPoWBits: pki.DefaultPoWBits} {
		if got := overlayPoW(bits); got != want {
			t.Errorf("overlayPoW(%d) = %d, want %d", bits, got, want)
		}
	}
}
