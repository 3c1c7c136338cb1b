package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ALPN is the application protocol every overlay QUIC connection negotiates.
const ALPN = "korium-tun/1"

// The proof-of-work nonce travels in the certificate subject's serialNumber
// attribute as "pow:<decimal>", so a peer's proof is checked during the
// handshake without a private extension OID.
const powSubjectPrefix = "pow:"

// ErrPeerRejected is wrapped by every handshake verification failure.
var ErrPeerRejected = errors.New("peer certificate rejected")

// PoWError is a peer certificate refused because its identity's proof of
// work is below the network's difficulty. It wraps ErrPeerRejected.
type PoWError struct {
	ID         Identity
	Have, Want int // bits
}

func (e *PoWError) Error() string {
	return fmt.Sprintf("%v: identity %s has %d bits of proof of work, this network requires %d", ErrPeerRejected, e.ID.Short(), e.Have, e.Want)
}

func (e *PoWError) Unwrap() error { return ErrPeerRejected }

// IdentityError is a peer certificate refused because it is not the
// identity the dialer expected. It wraps ErrPeerRejected.
type IdentityError struct{ Got, Want Identity }

func (e *IdentityError) Error() string {
	return fmt.Sprintf("%v: peer is %s, expected %s", ErrPeerRejected, e.Got, e.Want)
}

func (e *IdentityError) Unwrap() error { return ErrPeerRejected }

// Certificate returns a self-signed Ed25519 certificate for kp carrying its
// proof-of-work nonce. There is no CA and no host name: the key is the name.
func Certificate(kp *Keypair) (tls.Certificate, error) { return selfSigned(kp, nil) }

// selfSigned is Certificate with uris as URI SANs (a SPIFFE ID).
func selfSigned(kp *Keypair, uris []*url.URL) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: kp.id.String(), SerialNumber: powSubjectPrefix + strconv.FormatUint(kp.nonce, 10)},
		NotBefore:    now.Add(-24 * time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, kp.priv.Public(), kp.priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: kp.priv}, nil
}

// maxCertSize bounds a peer certificate before it is parsed: ours are
// about 400 bytes.
const maxCertSize = 4096

// VerifyPeerCertificate checks a peer's certificate chain as the overlay
// requires: exactly one certificate of at most 4 KiB, an Ed25519 key that
// is a valid point, and a proof-of-work nonce with at least powBits bits
// (a *PoWError otherwise). It returns the peer's identity (set also when
// only the proof of work is refused). The TLS handshake itself proves the
// peer holds the private key.
func VerifyPeerCertificate(rawCerts [][]byte, powBits int) (Identity, error) {
	var id Identity
	if len(rawCerts) == 1 && len(rawCerts[0]) > maxCertSize {
		return id, fmt.Errorf("%w: certificate of %d bytes", ErrPeerRejected, len(rawCerts[0]))
	}
	if len(rawCerts) != 1 {
		return id, fmt.Errorf("%w: want exactly one certificate, got %d", ErrPeerRejected, len(rawCerts))
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return id, fmt.Errorf("%w: %v", ErrPeerRejected, err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return id, fmt.Errorf("%w: key is not Ed25519", ErrPeerRejected)
	}
	if id, err = IdentityFromPublicKey(pub); err != nil {
		return id, fmt.Errorf("%w: %w", ErrPeerRejected, err)
	}
	if err := checkCertSPIFFE(cert, id); err != nil {
		return id, fmt.Errorf("%w: %w", ErrPeerRejected, err)
	}
	nonce, found, err := certNonce(cert)
	if err != nil {
		return id, err
	}
	if !found && powBits > 0 {
		return id, &PoWError{ID: id, Want: powBits}
	}
	if have := PoWBits(id, nonce); have < powBits {
		return id, &PoWError{ID: id, Have: have, Want: powBits}
	}
	return id, nil
}

func certNonce(cert *x509.Certificate) (nonce uint64, found bool, err error) {
	text, ok := strings.CutPrefix(cert.Subject.SerialNumber, powSubjectPrefix)
	if !ok {
		return 0, false, nil
	}
	nonce, err = strconv.ParseUint(text, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("%w: malformed proof-of-work nonce", ErrPeerRejected)
	}
	return nonce, true, nil
}

// TLSConfig holds what both ends of an overlay connection need.
type TLSConfig struct {
	Keypair *Keypair
	PoWBits int // network difficulty peers must meet
	// SPIFFE, when it has a trust domain, puts our SPIFFE ID in our
	// certificate.
	SPIFFE SPIFFEConfig
	// Refused, if set, sees every error that refused a peer certificate
	// (a *PoWError and an *IdentityError name the peer). It runs inside
	// the handshake.
	Refused func(error)
}

func (c TLSConfig) refused(err error) error {
	if err != nil && c.Refused != nil {
		c.Refused(err)
	}
	return err
}

func (c TLSConfig) base() (*tls.Config, error) {
	cert, err := CertificateWithSPIFFE(c.Keypair, c.SPIFFE)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{ALPN},
		// Identity is the key, checked in VerifyPeerCertificate; there is no
		// CA and no host name to check.
		InsecureSkipVerify: true,
	}, nil
}

// Server returns the listener's config: every client must present a
// certificate; accept (if non-nil) may refuse an identity.
func (c TLSConfig) Server(accept func(Identity) error) (*tls.Config, error) {
	cfg, err := c.base()
	if err != nil {
		return nil, err
	}
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		id, err := VerifyPeerCertificate(raw, c.PoWBits)
		if err != nil {
			return c.refused(err)
		}
		if accept != nil {
			if err := accept(id); err != nil {
				return c.refused(err)
			}
		}
		return nil
	}
	return cfg, nil
}

// Client returns the dialer's config, pinned to the identity it expects.
func (c TLSConfig) Client(expected Identity) (*tls.Config, error) {
	cfg, err := c.base()
	if err != nil {
		return nil, err
	}
	cfg.ServerName = expected.String()
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		id, err := VerifyPeerCertificate(raw, c.PoWBits)
		if err != nil {
			return c.refused(err)
		}
		if id != expected {
			return c.refused(&IdentityError{Got: id, Want: expected})
		}
		return nil
	}
	return cfg, nil
}

// PeerNonce returns the proof-of-work nonce the peer of a completed
// handshake presented (already checked against the network's difficulty).
func PeerNonce(cs tls.ConnectionState) (uint64, error) {
	if len(cs.PeerCertificates) != 1 {
		return 0, fmt.Errorf("%w: no peer certificate", ErrPeerRejected)
	}
	n, _, err := certNonce(cs.PeerCertificates[0])
	return n, err
}

// PeerIdentity returns the identity of the peer of a completed handshake.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	var id Identity
	if len(cs.PeerCertificates) != 1 {
		return id, fmt.Errorf("%w: no peer certificate", ErrPeerRejected)
	}
	pub, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return id, fmt.Errorf("%w: key is not Ed25519", ErrPeerRejected)
	}
	return IdentityFromPublicKey(pub)
}
