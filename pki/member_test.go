package pki

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// testCA is a plain Ed25519 CA for a trust domain (the threshold CA makes
// the same kind of certificate; pki/tca and overlay test with the real one).
type testCA struct {
	cert *x509.Certificate
	key  ed25519.PrivateKey
	td   spiffeid.TrustDomain
}

func newTestCA(t *testing.T, td string) *testCA {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	d := spiffeid.RequireTrustDomainFromString(td)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA " + td},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
		URIs: []*url.URL{d.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: priv, td: d}
}

// leaf signs a leaf with key pub naming spiffe (as the threshold CA's
// leaf template does), valid from nb to na.
func (ca *testCA) leaf(t *testing.T, pub ed25519.PublicKey, spiffe string, nonce uint64, nb, na time.Time) []byte {
	t.Helper()
	u, _ := url.Parse(spiffe)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{SerialNumber: PoWSerialNumber(nonce)},
		NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (ca *testCA) memberLeaf(t *testing.T, kp *Keypair) []byte {
	return ca.leaf(t, kp.priv.Public().(ed25519.PublicKey), "spiffe://"+ca.td.Name()+"/"+kp.Identity().String(), kp.Nonce(), time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
}

// memberHandshake runs a TLS handshake between a client presenting
// present (nil: self-signed) and a server of a members-only network of ca,
// and returns what the server learned and its error.
func memberHandshake(t *testing.T, ca *testCA, client *Keypair, present *tls.Certificate, bits int) (seen MemberInfo, serverErr error) {
	t.Helper()
	server, _ := GenerateKeypair(context.Background(), bits)
	srv := MemberTLS{TLSConfig: TLSConfig{Keypair: server, PoWBits: bits}, Check: func(cert *x509.Certificate, id Identity) error {
		info, err := VerifyMember(cert, ca.cert, ca.td, time.Now())
		seen = info
		return err
	}}
	cli := MemberTLS{TLSConfig: TLSConfig{Keypair: client, PoWBits: bits}, Leaf: func() *tls.Certificate { return present }}
	sc, err := srv.Server(nil)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cli.Client(server.Identity())
	if err != nil {
		t.Fatal(err)
	}
	serverErr = pipeHandshake(t, cc, sc)
	return seen, serverErr
}

func reasonOf(err error) MemberReason {
	var me *MemberError
	if errors.As(err, &me) {
		return me.Reason
	}
	return ""
}

// TestMemberHandshake: a member's CA-signed leaf passes a members-only
// server; every forgery is refused at the handshake with its reason.
func TestMemberHandshake(t *testing.T) {
	const bits = 4
	ca := newTestCA(t, "mesh.test")
	other := newTestCA(t, "mesh.test") // another CA of the same trust domain
	kp, _ := GenerateKeypair(context.Background(), bits)
	y, _ := GenerateKeypair(context.Background(), bits)
	pub := kp.priv.Public().(ed25519.PublicKey)
	sid := "spiffe://mesh.test/" + kp.Identity().String()
	present := func(der []byte, key *Keypair) *tls.Certificate {
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key.priv}
	}
	now := time.Now()

	good, _, err := LeafCertificate(kp, ca.memberLeaf(t, kp))
	if err != nil {
		t.Fatal(err)
	}
	info, serr := memberHandshake(t, ca, kp, &good, bits)
	if serr != nil || info.Identity != kp.Identity() || info.SPIFFEID.String() != sid {
		t.Fatalf("a member refused: %v, %+v", serr, info)
	}

	selfSPIFFE, err := CertificateWithSPIFFE(kp, SPIFFEConfig{TrustDomain: "mesh.test"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		cert    *tls.Certificate
		client  *Keypair
		reason  MemberReason
		errText string // for refusals by the base checks or by TLS itself
	}{
		{"no certificate but the self-signed one", nil, kp, ReasonTrustDomain, ""},
		{"self-signed with a SPIFFE ID of the trust domain", &selfSPIFFE, kp, ReasonSelfSigned, ""},
		{"signed by another CA", present(other.memberLeaf(t, kp), kp), kp, ReasonOtherCA, ""},
		{"expired", present(ca.leaf(t, pub, sid, kp.Nonce(), now.Add(-2*time.Hour), now.Add(-time.Second)), kp), kp, ReasonExpired, ""},
		{"not yet valid", present(ca.leaf(t, pub, sid, kp.Nonce(), now.Add(time.Hour), now.Add(2*time.Hour)), kp), kp, ReasonNotYetValid, ""},
		{"another trust domain", present(ca.leaf(t, pub, "spiffe://evil.test/"+kp.Identity().String(), kp.Nonce(), now.Add(-time.Minute), now.Add(time.Hour)), kp), kp, ReasonTrustDomain, ""},
		// X's leaf presented by Y: Y cannot sign the handshake with X's key.
		{"X's leaf presented by key Y", present(ca.memberLeaf(t, kp), y), y, "", "verif"},
		// A CA-signed leaf naming X for Y's key: the SPIFFE ID names another identity.
		{"leaf naming X for key Y", present(ca.leaf(t, y.priv.Public().(ed25519.PublicKey), sid, y.Nonce(), now.Add(-time.Minute), now.Add(time.Hour)), y), y, "", "names"},
		// A leaf whose nonce does not give the network's bits: refused by
		// the base check (nonce 0 itself meets them for one key in 2^bits).
		{"no proof of work", present(ca.leaf(t, pub, sid, weakNonce(kp.Identity(), bits), now.Add(-time.Minute), now.Add(time.Hour)), kp), kp, "", "proof of work"},
	} {
		_, serr := memberHandshake(t, ca, c.client, c.cert, bits)
		if serr == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if c.reason != "" && reasonOf(serr) != c.reason {
			t.Errorf("%s: refused for %q (%v), want %q", c.name, reasonOf(serr), serr, c.reason)
		}
		if c.errText != "" && !strings.Contains(serr.Error(), c.errText) {
			t.Errorf("%s: %v, want %q", c.name, serr, c.errText)
		}
	}
	if _, _, err := LeafCertificate(y, ca.memberLeaf(t, kp)); err == nil {
		t.Fatal("LeafCertificate took a leaf of another key")
	}
	if _, _, err := LeafCertificate(kp, ca.leaf(t, pub, sid, kp.Nonce()+1, now, now.Add(time.Hour))); err == nil {
		t.Fatal("LeafCertificate took a leaf with another nonce")
	}
}

// TestMemberTLSPresentsCurrentLeaf: the certificate presented is read at
// each handshake, so a renewed leaf goes out from the next one on; a node
// without membership rules accepts a leaf like a self-signed certificate.
func TestMemberTLSPresentsCurrentLeaf(t *testing.T) {
	ca := newTestCA(t, "mesh.test")
	kp, _ := GenerateKeypair(context.Background(), 0)
	server, _ := GenerateKeypair(context.Background(), 0)
	var current *tls.Certificate
	cli := MemberTLS{TLSConfig: TLSConfig{Keypair: kp}, Leaf: func() *tls.Certificate { return current }}
	// A server without membership rules: it accepts the leaf as it would
	// a self-signed certificate (Check only records what it saw).
	var saw []byte
	srv := MemberTLS{TLSConfig: TLSConfig{Keypair: server}, Check: func(cert *x509.Certificate, _ Identity) error { saw = cert.Raw; return nil }}
	sc, _ := srv.Server(nil)
	for i := 0; i < 2; i++ {
		der := ca.memberLeaf(t, kp)
		c, _, err := LeafCertificate(kp, der)
		if err != nil {
			t.Fatal(err)
		}
		current = &c
		cc, _ := cli.Client(server.Identity())
		if err := pipeHandshake(t, cc, sc); err != nil {
			t.Fatal(err)
		}
		if string(saw) != string(der) {
			t.Fatalf("round %d: the server saw another certificate", i)
		}
	}
	plain, _ := TLSConfig{Keypair: server}.Server(nil)
	cc, _ := cli.Client(server.Identity())
	if err := pipeHandshake(t, cc, plain); err != nil {
		t.Fatalf("a node without membership rules refused a leaf: %v", err)
	}
}

// weakNonce is the smallest nonce whose proof of work for id is below bits.
func weakNonce(id Identity, bits int) uint64 {
	n := uint64(0)
	for PoWBits(id, n) >= bits {
		n++
	}
	return n
}
