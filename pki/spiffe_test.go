package pki

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestSPIFFEIDGenerateExtractValidate(t *testing.T) {
	kp, _ := GenerateKeypair(context.Background(), 0)
	id := kp.Identity()
	for _, wl := range []string{"", "api", "/team/api-gateway"} {
		c := SPIFFEConfig{TrustDomain: "prod.example.com", Workload: wl}
		if err := c.Check(); err != nil {
			t.Fatal(err)
		}
		sid, err := c.ID(id)
		if err != nil {
			t.Fatal(err)
		}
		want := "spiffe://prod.example.com/" + id.String()
		if wl != "" {
			want += "/" + strings.TrimPrefix(wl, "/")
		}
		if sid.String() != want {
			t.Fatalf("ID = %s, want %s", sid, want)
		}
		cert, err := CertificateWithSPIFFE(kp, c)
		if err != nil {
			t.Fatal(err)
		}
		got, found, err := ExtractSPIFFEIDFromDER(cert.Certificate[0])
		if err != nil || !found || got != sid {
			t.Fatalf("extract = %v %v %v", got, found, err)
		}
		// The certificate still passes the overlay's handshake check.
		if pid, err := VerifyPeerCertificate(cert.Certificate, 0); err != nil || pid != id {
			t.Fatalf("VerifyPeerCertificate = %v, %v", pid, err)
		}
		vid, vwl, err := ValidateSPIFFEID(sid.String(), "prod.example.com")
		if err != nil || vid != id || vwl != strings.TrimSuffix("/"+strings.TrimPrefix(wl, "/"), "/") {
			t.Fatalf("validate = %v %q %v", vid, vwl, err)
		}
		if _, _, err := ValidateSPIFFEID(sid.String(), "other.example.com"); !errors.Is(err, ErrBadSPIFFE) {
			t.Fatalf("another trust domain accepted: %v", err)
		}
	}
	// No trust domain: no URI SAN.
	cert, _ := CertificateWithSPIFFE(kp, SPIFFEConfig{})
	if _, found, _ := ExtractSPIFFEIDFromDER(cert.Certificate[0]); found {
		t.Fatal("a SPIFFE ID without a trust domain")
	}
}

func TestSPIFFEIDMalformedRefused(t *testing.T) {
	kp, _ := GenerateKeypair(context.Background(), 0)
	h := kp.Identity().String()
	for _, s := range []string{
		"", "spiffe://", "spiffe://td", "http://td/" + h, "spiffe://TD/" + h, "spiffe://td/" + h + "/../x",
		"spiffe://td/" + h + "/./x", "spiffe://td//" + h, "spiffe://td/" + h + "/", "spiffe://td/" + h + "?q=1",
		"spiffe://td/" + h + "#f", "spiffe://td/" + strings.ToUpper(h), "spiffe://td/nothex", "spiffe://td/" + h[:62],
		"spiffe://user@td/" + h, "spiffe://td:443/" + h, "spiffe://td/" + strings.Repeat("0", 64),
	} {
		if _, _, err := ValidateSPIFFEID(s, "td"); !errors.Is(err, ErrBadSPIFFE) {
			t.Errorf("ValidateSPIFFEID(%q) = %v, want ErrBadSPIFFE", s, err)
		}
	}
	for _, c := range []SPIFFEConfig{{TrustDomain: ""}, {TrustDomain: "Upper.example"}, {TrustDomain: "a/b"},
		{TrustDomain: "td", Workload: "a/../b"}, {TrustDomain: "td", Workload: "a//b"}, {TrustDomain: "td", Workload: "a b"}, {TrustDomain: "td", Workload: "x/"}} {
		if err := c.Check(); !errors.Is(err, ErrBadSPIFFE) {
			t.Errorf("Check(%+v) = %v", c, err)
		}
	}
}

// certWithURIs is kp's self-signed overlay certificate with uris instead
// of its own SPIFFE ID: what a peer lying about its SPIFFE ID presents.
func certWithURIs(t *testing.T, kp *Keypair, uris ...string) tls.Certificate {
	t.Helper()
	var us []*url.URL
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), URIs: us}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, kp.priv.Public(), kp.priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: kp.priv}
}

// TestHandshakeRefusesForeignSPIFFEID: a peer whose certificate's SPIFFE
// ID names another identity (or is malformed, or one of several URI SANs)
// is refused by the other end, and the refusal is reported to Refused.
func TestHandshakeRefusesForeignSPIFFEID(t *testing.T) {
	alice, _ := GenerateKeypair(context.Background(), 0)
	bob, _ := GenerateKeypair(context.Background(), 0)
	mallory, _ := GenerateKeypair(context.Background(), 0)
	for name, uris := range map[string][]string{
		"names bob":     {"spiffe://td/" + bob.Identity().String()},
		"malformed":     {"spiffe://td/" + mallory.Identity().String() + "/../x"},
		"two URI SANs":  {"spiffe://td/" + mallory.Identity().String(), "spiffe://td/" + bob.Identity().String()},
		"no identity":   {"spiffe://td/workload"},
		"two, one http": {"https://example.com/", "spiffe://td/" + mallory.Identity().String()},
	} {
		forged := certWithURIs(t, mallory, uris...)
		if _, err := VerifyPeerCertificate(forged.Certificate, 0); !errors.Is(err, ErrSPIFFEMismatch) || !errors.Is(err, ErrPeerRejected) {
			t.Fatalf("%s: VerifyPeerCertificate = %v", name, err)
		}
		var refused []error
		server := TLSConfig{Keypair: alice, Refused: func(err error) { refused = append(refused, err) }}
		sc, err := server.Server(nil)
		if err != nil {
			t.Fatal(err)
		}
		// Mallory dials alice presenting the forged certificate.
		cc, _ := TLSConfig{Keypair: mallory}.Client(alice.Identity())
		cc.Certificates = []tls.Certificate{forged}
		if serr := pipeHandshake(t, cc, sc); serr == nil || !errors.Is(serr, ErrSPIFFEMismatch) {
			t.Fatalf("%s: server accepted: %v", name, serr)
		}
		if len(refused) != 1 || !errors.Is(refused[0], ErrSPIFFEMismatch) {
			t.Fatalf("%s: Refused saw %v", name, refused)
		}
	}
	// An honest SPIFFE ID passes both ways, and the peer's ID is readable.
	ac := TLSConfig{Keypair: alice, SPIFFE: SPIFFEConfig{TrustDomain: "td", Workload: "w"}}
	bc := TLSConfig{Keypair: bob, SPIFFE: SPIFFEConfig{TrustDomain: "td"}}
	r := handshake(t, ac, bc, bob.Identity())
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("honest SPIFFE handshake: %+v", r)
	}
}

// pipeHandshake runs a TLS handshake between cc and sc and returns the
// server's error.
func pipeHandshake(t *testing.T, cc, sc *tls.Config) error {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(b, sc)
		s.SetDeadline(time.Now().Add(5 * time.Second))
		errc <- s.Handshake()
		b.Close()
	}()
	c := tls.Client(a, cc)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Handshake()
	a.Close()
	return <-errc
}

func TestPeerSPIFFEID(t *testing.T) {
	kp, _ := GenerateKeypair(context.Background(), 0)
	cert, _ := CertificateWithSPIFFE(kp, SPIFFEConfig{TrustDomain: "td"})
	c, _ := x509.ParseCertificate(cert.Certificate[0])
	if got := PeerSPIFFEID([]*x509.Certificate{c}); got != "spiffe://td/"+kp.Identity().String() {
		t.Fatalf("PeerSPIFFEID = %q", got)
	}
	plain, _ := Certificate(kp)
	c, _ = x509.ParseCertificate(plain.Certificate[0])
	if got := PeerSPIFFEID([]*x509.Certificate{c}); got != "" {
		t.Fatalf("PeerSPIFFEID of a plain certificate = %q", got)
	}
}

func FuzzValidateSPIFFEID(f *testing.F) {
	kp, _ := GenerateKeypair(context.Background(), 0)
	h := kp.Identity().String()
	for _, s := range []string{"spiffe://td/" + h, "spiffe://td/" + h + "/a/b", "spiffe://td/" + h + "/../a", "spiffe://TD/x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, wl, err := ValidateSPIFFEID(s, "td")
		if err != nil {
			return
		}
		// Whatever is accepted round-trips through generation.
		sid, err := SPIFFEConfig{TrustDomain: "td", Workload: wl}.ID(id)
		if err != nil || sid.String() != s {
			t.Fatalf("accepted %q but it regenerates as %v (%v)", s, sid, err)
		}
	})
}
