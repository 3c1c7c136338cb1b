package pki

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseIdentity(t *testing.T) {
	kp, err := GenerateKeypair(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	good := kp.Identity().String()
	id, err := ParseIdentity(good)
	if err != nil || id.String() != good {
		t.Fatalf("ParseIdentity(good) = %v, %v", id, err)
	}
	for _, bad := range []string{"", good[:63], good + "a", strings.ToUpper(good), " " + good[1:], "0x" + good[2:], strings.Repeat("g", 64)} {
		if _, err := ParseIdentity(bad); !errors.Is(err, ErrBadIdentity) {
			t.Errorf("ParseIdentity(%q) err = %v, want ErrBadIdentity", bad, err)
		}
	}
}

// badKeys are 32-byte strings that are nobody's Ed25519 key.
func badKeys() map[string][]byte {
	m := map[string][]byte{
		"all zero": make([]byte, 32),
		"all FF":   bytes.Repeat([]byte{0xff}, 32),
		// y = 2 has no x on the curve.
		"off curve": append([]byte{2}, make([]byte, 31)...),
		// y = p + 1 is the non-canonical spelling of y = 1 (and small order
		// too); y = p + 3 of a valid point of large order... (p = 2^255-19)
		"non-canonical": func() []byte {
			b := bytes.Repeat([]byte{0xff}, 32)
			b[0], b[31] = 0xee, 0x7f // p = 2^255-19, i.e. y = 0 spelled as p
			return b
		}(),
	}
	// The eight small-order points (the torsion subgroup), in their
	// canonical encodings (from the Ed25519 literature, e.g. RFC 8032
	// errata discussions and libsodium's blocklist).
	for i, h := range []string{
		"0100000000000000000000000000000000000000000000000000000000000000",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"0000000000000000000000000000000000000000000000000000000000000080",
		"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
		"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
		"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
		"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
	} {
		b, _ := hex.DecodeString(h)
		m[fmt.Sprintf("small order %d", i)] = b
	}
	return m
}

func TestBadKeysRefusedByEveryParser(t *testing.T) {
	for name, b := range badKeys() {
		if _, err := IdentityFromBytes(b); !errors.Is(err, ErrBadIdentity) {
			t.Errorf("%s: IdentityFromBytes err = %v, want ErrBadIdentity", name, err)
		}
		if _, err := IdentityFromPublicKey(ed25519.PublicKey(b)); !errors.Is(err, ErrBadIdentity) {
			t.Errorf("%s: IdentityFromPublicKey err = %v, want ErrBadIdentity", name, err)
		}
		if _, err := ParseIdentity(hex.EncodeToString(b)); !errors.Is(err, ErrBadIdentity) {
			t.Errorf("%s: ParseIdentity err = %v, want ErrBadIdentity", name, err)
		}
		var id Identity
		if err := id.UnmarshalText([]byte(hex.EncodeToString(b))); err == nil {
			t.Errorf("%s: UnmarshalText accepted it", name)
		}
	}
	for i := 0; i < 50; i++ {
		kp, err := GenerateKeypair(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := kp.Identity().Check(); err != nil {
			t.Fatalf("a real key refused: %v", err)
		}
	}
}

// A certificate whose key is a small-order point is refused at the
// handshake's verification.
func TestCertificateWithBadKeyRefused(t *testing.T) {
	for name, b := range badKeys() {
		der := certWithRawKey(t, b)
		if _, err := VerifyPeerCertificate([][]byte{der}, 0); !errors.Is(err, ErrPeerRejected) || !errors.Is(err, ErrBadIdentity) {
			t.Errorf("%s: VerifyPeerCertificate err = %v, want ErrPeerRejected wrapping ErrBadIdentity", name, err)
		}
	}
}

// certWithRawKey returns a certificate carrying key b as its Ed25519 key
// (signed by some other key: the verifier reads the key before anything).
func certWithRawKey(t *testing.T, b []byte) []byte {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, ed25519.PublicKey(b), priv)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func FuzzIdentityFromBytes(f *testing.F) {
	for _, b := range badKeys() {
		f.Add(b)
	}
	kp, _ := GenerateKeypair(context.Background(), 0)
	id := kp.Identity()
	f.Add(id[:])
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := IdentityFromBytes(b)
		if err != nil {
			if !id.IsZero() {
				t.Fatal("error with a non-zero identity")
			}
			return
		}
		if id.Check() != nil {
			t.Fatal("accepted identity fails Check")
		}
		if _, err := ParseIdentity(id.String()); err != nil {
			t.Fatalf("accepted bytes do not round-trip as text: %v", err)
		}
	})
}

func TestPoW(t *testing.T) {
	kp, err := GenerateKeypair(context.Background(), 12)
	if err != nil {
		t.Fatal(err)
	}
	if kp.PoWBits() < 12 {
		t.Fatalf("generated key has %d bits, want >= 12", kp.PoWBits())
	}
	if err := CheckPoW(kp.Identity(), kp.Nonce(), 12); err != nil {
		t.Fatal(err)
	}
	// Find a nonce that is too weak and check it is refused.
	weak := kp.Nonce() + 1
	for PoWBits(kp.Identity(), weak) >= 12 {
		weak++
	}
	if CheckPoW(kp.Identity(), weak, 12) == nil {
		t.Fatal("weak nonce accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := GenerateKeypair(ctx, 31); err == nil {
		t.Fatal("cancelled generation succeeded")
	}
}

func TestSignVerify(t *testing.T) {
	kp, _ := GenerateKeypair(context.Background(), 0)
	sig := kp.Sign([]byte("hello"))
	if !kp.Identity().Verify([]byte("hello"), sig) {
		t.Fatal("valid signature refused")
	}
	if kp.Identity().Verify([]byte("hellp"), sig) || kp.Identity().Verify([]byte("hello"), sig[:10]) {
		t.Fatal("bad signature accepted")
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "node.key")
	kp, _ := GenerateKeypair(context.Background(), 4)
	if err := SaveKeyFile(path, kp); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o, want 600", st.Mode().Perm())
	}
	got, err := LoadKeyFile(path)
	if err != nil || got.Identity() != kp.Identity() || got.Nonce() != kp.Nonce() {
		t.Fatalf("LoadKeyFile = %v, %v", got, err)
	}
	// Never overwritten.
	other, _ := GenerateKeypair(context.Background(), 0)
	if err := SaveKeyFile(path, other); !errors.Is(err, ErrKeyFileExists) {
		t.Fatalf("SaveKeyFile over existing = %v", err)
	}
	if again, _ := LoadKeyFile(path); again.Identity() != kp.Identity() {
		t.Fatal("key file was replaced")
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Fatalf("temp files left behind: %v", ents)
	}
	// LoadOrCreate keeps the existing key.
	kp2, created, err := LoadOrCreateKeyFile(context.Background(), path, 4)
	if err != nil || created || kp2.Identity() != kp.Identity() {
		t.Fatalf("LoadOrCreate existing = %v %v %v", kp2, created, err)
	}
	fresh := filepath.Join(dir, "fresh.key")
	kp3, created, err := LoadOrCreateKeyFile(context.Background(), fresh, 4)
	if err != nil || !created || kp3.PoWBits() < 4 {
		t.Fatalf("LoadOrCreate new = %v %v %v", kp3, created, err)
	}

	data, _ := os.ReadFile(path)
	cases := map[string]struct {
		data []byte
		mode os.FileMode
		want string
	}{
		"group readable": {data, 0o640, "chmod 600"},
		"world readable": {data, 0o604, "chmod 600"},
		"truncated":      {data[:len(data)-10], 0o600, "corrupt"},
		"empty":          {nil, 0o600, "corrupt"},
		"garbage":        {[]byte("korium-tun-key v1\nseed zz\nnonce 1\n"), 0o600, "corrupt"},
		"extra line":     {append(append([]byte{}, data...), "x\n"...), 0o600, "corrupt"},
		"huge":           {make([]byte, 1<<20), 0o600, "corrupt"},
	}
	for name, c := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(p, c.data, c.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, c.mode)
		_, err := LoadKeyFile(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want mention of %q and the path", name, err, c.want)
		}
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "keygen") {
		t.Errorf("missing file err = %v", err)
	}
}

func FuzzDecodeKeyFile(f *testing.F) {
	kp, _ := NewKeypair(make([]byte, 32), 42)
	f.Add(EncodeKeyFile(kp))
	f.Add([]byte("korium-tun-key v1\nseed \nnonce \n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		kp, err := DecodeKeyFile(data)
		if err != nil {
			return
		}
		if string(EncodeKeyFile(kp)) != string(data) {
			t.Fatalf("accepted a non-canonical key file %q", data)
		}
	})
}

// handshake runs TLS over an in-memory pipe with the overlay configs.
type handshakeResult struct {
	clientErr, serverErr error
	serverSaw            Identity
	serverNonce          uint64
}

func handshake(t *testing.T, client, server TLSConfig, expected Identity) (r handshakeResult) {
	t.Helper()
	cc, err := client.Client(expected)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := server.Server(nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := tls.Server(b, sc)
		s.SetDeadline(time.Now().Add(5 * time.Second))
		r.serverErr = s.Handshake()
		if r.serverErr == nil {
			r.serverSaw, r.serverErr = PeerIdentity(s.ConnectionState())
			r.serverNonce, _ = PeerNonce(s.ConnectionState())
		}
		b.Close()
	}()
	c := tls.Client(a, cc)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r.clientErr = c.Handshake()
	a.Close()
	<-done
	return
}

func TestTLSIdentity(t *testing.T) {
	const bits = 8
	alice, _ := GenerateKeypair(context.Background(), bits)
	bob, _ := GenerateKeypair(context.Background(), bits)
	mallory, _ := GenerateKeypair(context.Background(), bits)
	ac, bc := TLSConfig{Keypair: alice, PoWBits: bits}, TLSConfig{Keypair: bob, PoWBits: bits}

	r := handshake(t, ac, bc, bob.Identity())
	if r.clientErr != nil || r.serverErr != nil || r.serverSaw != alice.Identity() || r.serverNonce != alice.Nonce() {
		t.Fatalf("good handshake: %+v", r)
	}
	// The dialer pins bob; mallory answers: refused.
	cerr := handshake(t, ac, TLSConfig{Keypair: mallory, PoWBits: bits}, bob.Identity()).clientErr
	if cerr == nil || !strings.Contains(cerr.Error(), "expected") {
		t.Fatalf("wrong identity accepted: %v", cerr)
	}
	// A peer whose proof is below the network's difficulty is refused by both ends.
	weak, _ := NewKeypair(make([]byte, 32), 0)
	for weak.PoWBits() >= bits {
		weak.nonce++
	}
	serr := handshake(t, TLSConfig{Keypair: weak, PoWBits: 0}, bc, bob.Identity()).serverErr
	if serr == nil || !strings.Contains(serr.Error(), "proof of work") {
		t.Fatalf("server accepted low proof of work: %v", serr)
	}
	cerr = handshake(t, ac, TLSConfig{Keypair: weak, PoWBits: 0}, weak.Identity()).clientErr
	if cerr == nil || !strings.Contains(cerr.Error(), "proof of work") {
		t.Fatalf("client accepted low proof of work: %v", cerr)
	}
}
