package pki

import (
	"bytes"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Members-only networks. A member holds a leaf certificate (an X509-SVID)
// that a CA (the threshold CA of pki/tca) signed for its own identity key,
// and presents it in the handshake in place of its self-signed certificate.
// Since the leaf's key is the identity key, every rule of the self-signed
// certificate still holds: the key is the identity, the TLS handshake
// proves possession, and the leaf carries the proof-of-work nonce in its
// subject serialNumber ("pow:<n>") as the self-signed certificate does. A
// peer that does not care about membership checks a leaf exactly as a
// self-signed certificate (VerifyPeerCertificate); one that does also runs
// VerifyMember.

// ErrNotMember is wrapped by every MemberError.
var ErrNotMember = errors.New("not a member")

// MemberReason names why a certificate is not a member's, for counters.
type MemberReason string

// Reasons VerifyMember refuses a certificate.
const (
	ReasonSelfSigned  MemberReason = "self_signed"   // not signed by any CA (a node's own certificate)
	ReasonOtherCA     MemberReason = "other_ca"      // signed, but not by this CA
	ReasonExpired     MemberReason = "expired"       // past its NotAfter
	ReasonNotYetValid MemberReason = "not_yet_valid" // before its NotBefore
	ReasonTrustDomain MemberReason = "trust_domain"  // no SPIFFE ID, or one of another trust domain
	ReasonNotSVID     MemberReason = "not_svid"      // chains, but breaks an X509-SVID rule
	ReasonKeyMismatch MemberReason = "key_mismatch"  // its SPIFFE ID names another identity than its key
)

// MemberReasons lists every reason, in a fixed order (for counters).
var MemberReasons = []MemberReason{ReasonSelfSigned, ReasonOtherCA, ReasonExpired, ReasonNotYetValid, ReasonTrustDomain, ReasonNotSVID, ReasonKeyMismatch}

// MemberError says why a certificate is not a member's.
type MemberError struct {
	Reason MemberReason
	Detail string
}

func (e *MemberError) Error() string {
	return fmt.Sprintf("%v (%s): %s", ErrNotMember, e.Reason, e.Detail)
}

func (e *MemberError) Unwrap() error { return ErrNotMember }

func notMember(r MemberReason, format string, args ...any) error {
	return &MemberError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// MemberInfo is what VerifyMember learned from a member's certificate.
type MemberInfo struct {
	Identity Identity
	SPIFFEID spiffeid.ID
	Workload string // "" or "/a/b"
	NotAfter time.Time
}

// VerifyMember checks cert as a member's certificate of trust domain td
// under ca: signed by ca, an X509-SVID of td (go-spiffe's x509svid.Verify
// with ca as td's bundle) valid at now, whose SPIFFE ID names its own key.
// It does not check the proof of work (VerifyPeerCertificate does).
func VerifyMember(cert, ca *x509.Certificate, td spiffeid.TrustDomain, now time.Time) (MemberInfo, error) {
	var info MemberInfo
	sid, found, err := ExtractSPIFFEID(cert)
	switch {
	case err != nil:
		return info, notMember(ReasonNotSVID, "%v", err)
	case !found:
		return info, notMember(ReasonTrustDomain, "no SPIFFE ID (want one in %s)", td)
	case sid.TrustDomain() != td:
		return info, notMember(ReasonTrustDomain, "SPIFFE ID %s is not in %s", clip(sid.String()), td)
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		if cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature) == nil {
			return info, notMember(ReasonSelfSigned, "a self-signed certificate, not one the CA of %s signed", td)
		}
		return info, notMember(ReasonOtherCA, "not signed by the CA of %s: %v", td, err)
	}
	switch {
	case now.After(cert.NotAfter):
		return info, notMember(ReasonExpired, "expired %s ago (at %s)", now.Sub(cert.NotAfter).Round(time.Second), cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(cert.NotBefore):
		return info, notMember(ReasonNotYetValid, "valid only from %s", cert.NotBefore.UTC().Format(time.RFC3339))
	}
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca})
	if _, _, err := x509svid.Verify([]*x509.Certificate{cert}, bundle, x509svid.WithTime(now)); err != nil {
		return info, notMember(ReasonNotSVID, "%v", err)
	}
	id, wl, err := identityOfSPIFFE(sid)
	if err != nil {
		return info, notMember(ReasonNotSVID, "%v", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || !bytes.Equal(pub, id[:]) {
		return info, notMember(ReasonKeyMismatch, "the SPIFFE ID names %s but the key is another", id.Short())
	}
	return MemberInfo{Identity: id, SPIFFEID: sid, Workload: wl, NotAfter: cert.NotAfter}, nil
}

// PoWSerialNumber is the subject serialNumber that carries a proof-of-work
// nonce in every certificate a node presents (self-signed or CA-signed).
func PoWSerialNumber(nonce uint64) string { return powSubjectPrefix + strconv.FormatUint(nonce, 10) }

// LeafCertificate returns the tls.Certificate that presents der (a leaf
// the CA signed) with kp's key. It refuses a leaf for another key or one
// that does not carry kp's proof-of-work nonce: peers would refuse it.
func LeafCertificate(kp *Keypair, der []byte) (tls.Certificate, *x509.Certificate, error) {
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("not a certificate: %v", err)
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok || !bytes.Equal(pub, kp.id[:]) {
		return tls.Certificate{}, nil, fmt.Errorf("the certificate is for another key than identity %s", kp.id.Short())
	}
	nonce, found, err := certNonce(leaf)
	if err != nil || !found || nonce != kp.nonce {
		return tls.Certificate{}, nil, fmt.Errorf("the certificate does not carry this key's proof-of-work nonce %d", kp.nonce)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: kp.priv, Leaf: leaf}, leaf, nil
}

// MemberTLS is TLSConfig for a node of a members-only network: it
// presents Leaf when there is one (else the self-signed certificate), and
// runs Check on every peer certificate that passed VerifyPeerCertificate.
type MemberTLS struct {
	TLSConfig
	// Leaf returns the certificate to present now, or nil for the
	// self-signed one. Called once per handshake, so a renewed leaf is
	// presented from the next handshake on.
	Leaf func() *tls.Certificate
	// Check, if set, may refuse a peer's certificate (already checked for
	// key, SPIFFE ID and proof of work) and identity; its error fails the
	// handshake.
	Check func(cert *x509.Certificate, id Identity) error
}

// Server is TLSConfig.Server with the member rules.
func (m MemberTLS) Server(accept func(Identity) error) (*tls.Config, error) {
	cfg, err := m.TLSConfig.Server(accept)
	if err != nil {
		return nil, err
	}
	return m.wrap(cfg), nil
}

// Client is TLSConfig.Client with the member rules.
func (m MemberTLS) Client(expected Identity) (*tls.Config, error) {
	cfg, err := m.TLSConfig.Client(expected)
	if err != nil {
		return nil, err
	}
	return m.wrap(cfg), nil
}

func (m MemberTLS) wrap(cfg *tls.Config) *tls.Config {
	self := cfg.Certificates[0]
	current := func() *tls.Certificate {
		if m.Leaf != nil {
			if l := m.Leaf(); l != nil {
				return l
			}
		}
		return &self
	}
	cfg.Certificates = nil
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current(), nil }
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return current(), nil }
	if m.Check != nil {
		base := cfg.VerifyPeerCertificate
		cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			if err := base(raw, chains); err != nil {
				return err
			}
			cert, err := x509.ParseCertificate(raw[0]) // parsed once already: cannot fail
			if err != nil {
				return fmt.Errorf("%w: %v", ErrPeerRejected, err)
			}
			id, err := IdentityFromPublicKey(cert.PublicKey.(ed25519.PublicKey))
			if err != nil {
				return fmt.Errorf("%w: %w", ErrPeerRejected, err)
			}
			if err := m.Check(cert, id); err != nil {
				return fmt.Errorf("%w: %w", ErrPeerRejected, err)
			}
			return nil
		}
	}
	return cfg
}
