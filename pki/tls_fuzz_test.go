package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

// Refusals carry why: a typed error naming the peer, which Refused hears of.
func TestTLSRejectsAreTyped(t *testing.T) {
	const bits = 8
	alice, _ := GenerateKeypair(context.Background(), bits)
	bob, _ := GenerateKeypair(context.Background(), bits)
	mallory, _ := GenerateKeypair(context.Background(), bits)
	var rejected []error
	ac := TLSConfig{Keypair: alice, PoWBits: bits, Refused: func(err error) { rejected = append(rejected, err) }}
	cerr := handshake(t, ac, TLSConfig{Keypair: mallory, PoWBits: bits}, bob.Identity()).clientErr
	var ie *IdentityError
	if !errors.As(cerr, &ie) || ie.Got != mallory.Identity() || ie.Want != bob.Identity() || !errors.Is(cerr, ErrPeerRejected) {
		t.Fatalf("wrong identity: %v", cerr)
	}
	weak, _ := NewKeypair(make([]byte, 32), 0)
	for weak.PoWBits() >= bits {
		weak.nonce++
	}
	cerr = handshake(t, ac, TLSConfig{Keypair: weak}, weak.Identity()).clientErr
	var pe *PoWError
	if !errors.As(cerr, &pe) || pe.ID != weak.Identity() || pe.Have != weak.PoWBits() || pe.Want != bits {
		t.Fatalf("low proof of work: %v", cerr)
	}
	if len(rejected) != 2 || !errors.As(rejected[0], &ie) || !errors.As(rejected[1], &pe) {
		t.Fatalf("Refused heard %v", rejected)
	}
}

// FuzzVerifyPeerCertificate feeds arbitrary DER (and chains of it) to the
// handshake's certificate check: it never panics, and whatever it accepts
// is one Ed25519 certificate whose key is the returned identity, a valid
// point, with the required proof of work.
func FuzzVerifyPeerCertificate(f *testing.F) {
	kp, _ := GenerateKeypair(context.Background(), 4)
	good, err := Certificate(kp)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good.Certificate[0], uint8(4), false)
	f.Add(good.Certificate[0], uint8(30), false) // too little proof of work
	f.Add(good.Certificate[0], uint8(4), true)   // a chain of two
	f.Add(good.Certificate[0][:100], uint8(0), false)
	// Not Ed25519.
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{SerialNumber: "pow:1"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	ec, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ek.PublicKey, ek)
	f.Add(ec, uint8(0), false)
	// A malformed nonce.
	bad := *kp
	tmpl.Subject.SerialNumber = "pow:x"
	bc, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, bad.priv.Public(), bad.priv)
	f.Add(bc, uint8(0), false)
	f.Add([]byte{0x30, 0x82, 0xff, 0xff}, uint8(0), false)
	f.Fuzz(func(t *testing.T, der []byte, bits uint8, chain bool) {
		raw := [][]byte{der}
		if chain {
			raw = append(raw, der)
		}
		want := int(bits % (MaxPoWBits + 1))
		id, err := VerifyPeerCertificate(raw, want)
		if err != nil {
			if !errors.Is(err, ErrPeerRejected) {
				t.Fatalf("error %v does not wrap ErrPeerRejected", err)
			}
			return
		}
		if chain || len(der) > maxCertSize {
			t.Fatal("accepted a chain or an oversized certificate")
		}
		cert, perr := x509.ParseCertificate(der)
		if perr != nil {
			t.Fatalf("accepted what x509 cannot parse: %v", perr)
		}
		pub, ok := cert.PublicKey.(ed25519.PublicKey)
		if !ok {
			t.Fatal("accepted a key that is not Ed25519")
		}
		got, ierr := IdentityFromPublicKey(pub)
		if ierr != nil || got != id {
			t.Fatalf("identity %s is not the certificate's key (%v)", id.Short(), ierr)
		}
		if err := id.Check(); err != nil {
			t.Fatalf("accepted an invalid point: %v", err)
		}
		nonce, found, _ := certNonce(cert)
		if want > 0 && (!found || PoWBits(id, nonce) < want) {
			t.Fatalf("accepted %d bits of proof of work, want %d", PoWBits(id, nonce), want)
		}
	})
}
