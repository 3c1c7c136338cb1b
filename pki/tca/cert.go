package tca

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"sort"
	"time"

	"filippo.io/edwards25519"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/frost"
)

// The CA certificate is self-issued by the group: an Ed25519 certificate
// whose key is the group key, CA:true with path length 0, the trust
// domain's SPIFFE ID as its URI SAN, and a non-critical extension listing
// the signers (identity, FROST identifier, verifying share) and the
// threshold. That list is signed by the group with the rest of the
// certificate, so a requester learns whom to ask and how to check each
// signature share from the certificate alone.

// oidSigners identifies the signer-list extension: an arc under 2.25
// (UUID-based OIDs, needing no registration) small enough for
// encoding/asn1 and crypto/x509 (arcs below 2^31).
var oidSigners = asn1.ObjectIdentifier{2, 25, 1301740318, 177402919, 2024, 11}

type signersExt struct {
	Version   int
	Threshold int
	Signers   []signerEntry
}

type signerEntry struct {
	ID        int
	Identity  []byte
	Verifying []byte
}

// CA is a parsed, self-consistent threshold CA certificate.
type CA struct {
	Cert        *x509.Certificate
	DER         []byte
	TrustDomain spiffeid.TrustDomain
	GroupKey    ed25519.PublicKey
	Threshold   int
	// Signers in identifier order: Signers[i] has identifier i+1.
	Signers   []pki.Identity
	verifying map[uint16]*edwards25519.Point
	group     *edwards25519.Point
}

// SignerID returns the FROST identifier of id, or 0.
func (ca *CA) SignerID(id pki.Identity) uint16 {
	for i, s := range ca.Signers {
		if s == id {
			return uint16(i + 1)
		}
	}
	return 0
}

// Fingerprint is the SHA-256 of the CA's group key, for logs and pins.
func (ca *CA) Fingerprint() [32]byte { return sha256.Sum256(ca.GroupKey) }

// ErrBadCA is wrapped by every reason a CA certificate is refused.
var ErrBadCA = errors.New("tca: not a valid threshold CA certificate")

// ParseCA parses a CA certificate and checks it: Ed25519, self-signed
// under its own key (the group's FROST signature), CA:true, a SPIFFE trust
// domain URI SAN, and a signer list with 3..64 distinct valid identities in
// increasing order, a threshold within it, and verifying shares that are
// valid points.
func ParseCA(der []byte) (*CA, error) {
	if len(der) > maxCertSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadCA, len(der))
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCA, err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: key is not Ed25519", ErrBadCA)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: not a CA (basic constraints, keyCertSign)", ErrBadCA)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("%w: the group's signature does not verify: %v", ErrBadCA, err)
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("%w: want one URI SAN (spiffe://trust-domain)", ErrBadCA)
	}
	tdID, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil || tdID.Path() != "" {
		return nil, fmt.Errorf("%w: URI SAN is not a trust domain ID", ErrBadCA)
	}
	ca := &CA{Cert: cert, DER: der, TrustDomain: tdID.TrustDomain(), GroupKey: pub, verifying: map[uint16]*edwards25519.Point{}}
	if ca.group, err = frost.DecodePoint(pub); err != nil {
		return nil, fmt.Errorf("%w: group key: %v", ErrBadCA, err)
	}
	var ext *pkix.Extension
	for i := range cert.Extensions {
		if cert.Extensions[i].Id.Equal(oidSigners) {
			if ext != nil {
				return nil, fmt.Errorf("%w: two signer lists", ErrBadCA)
			}
			ext = &cert.Extensions[i]
		}
	}
	if ext == nil {
		return nil, fmt.Errorf("%w: no signer list", ErrBadCA)
	}
	var sx signersExt
	if rest, err := asn1.Unmarshal(ext.Value, &sx); err != nil || len(rest) != 0 || sx.Version != 1 {
		return nil, fmt.Errorf("%w: malformed signer list", ErrBadCA)
	}
	n := len(sx.Signers)
	if err := frost.CheckParams(sx.Threshold, n); err != nil || n > MaxSigners {
		return nil, fmt.Errorf("%w: %d-of-%d", ErrBadCA, sx.Threshold, n)
	}
	ca.Threshold = sx.Threshold
	for i, e := range sx.Signers {
		id, err := pki.IdentityFromBytes(e.Identity)
		if err != nil || e.ID != i+1 || (i > 0 && bytes.Compare(ca.Signers[i-1][:], id[:]) >= 0) {
			return nil, fmt.Errorf("%w: signer %d", ErrBadCA, i+1)
		}
		v, err := frost.DecodePoint(e.Verifying)
		if err != nil {
			return nil, fmt.Errorf("%w: verifying share %d", ErrBadCA, i+1)
		}
		ca.Signers = append(ca.Signers, id)
		ca.verifying[uint16(i+1)] = v
	}
	return ca, nil
}

// sortSigners returns ids sorted: the order that gives FROST identifiers.
func sortSigners(ids []pki.Identity) []pki.Identity {
	out := append([]pki.Identity(nil), ids...)
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i][:], out[j][:]) < 0 })
	return out
}

// caTemplate is the CA certificate every signer builds identically from
// the DKG's outcome.
func caTemplate(td spiffeid.TrustDomain, group []byte, threshold int, signers []pki.Identity, verifying map[uint16]*edwards25519.Point, notBefore time.Time, validity time.Duration) (*x509.Certificate, error) {
	sx := signersExt{Version: 1, Threshold: threshold}
	for i, s := range signers {
		sx.Signers = append(sx.Signers, signerEntry{ID: i + 1, Identity: append([]byte(nil), s[:]...), Verifying: verifying[uint16(i+1)].Bytes()})
	}
	val, err := asn1.Marshal(sx)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(group)
	serial := new(big.Int).SetBytes(h[:16])
	serial.SetBit(serial, 127, 0)
	if serial.Sign() == 0 {
		serial.SetInt64(1)
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "korium-tun threshold CA " + td.Name(), Organization: []string{td.Name()}},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          h[:20],
		URIs:                  []*url.URL{td.ID().URL()},
		ExtraExtensions:       []pkix.Extension{{Id: oidSigners, Value: val}},
	}, nil
}

// errCaptured stops x509.CreateCertificate once it has handed us the TBS.
var errCaptured = errors.New("tca: TBS captured")

// tbsSigner is a crypto.Signer for key: it captures the message
// (CreateCertificate hands Ed25519 the TBSCertificate itself) and returns
// sig if sig is set and the message is want, else errCaptured.
type tbsSigner struct {
	key      ed25519.PublicKey
	captured []byte
	want     []byte
	sig      []byte
}

func (s *tbsSigner) Public() crypto.PublicKey { return s.key }

func (s *tbsSigner) Sign(_ io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != 0 {
		return nil, errors.New("tca: Ed25519 signs the message itself")
	}
	if s.sig != nil && bytes.Equal(msg, s.want) {
		return s.sig, nil
	}
	s.captured = append([]byte(nil), msg...)
	return nil, errCaptured
}

// buildTBS returns the TBSCertificate x509.CreateCertificate would sign.
func buildTBS(tmpl, parent *x509.Certificate, pub ed25519.PublicKey, caKey ed25519.PublicKey) ([]byte, error) {
	s := &tbsSigner{key: caKey}
	_, err := x509.CreateCertificate(nil, tmpl, parent, pub, s)
	if !errors.Is(err, errCaptured) {
		if err == nil {
			err = errors.New("no TBS")
		}
		return nil, fmt.Errorf("tca: building the certificate: %w", err)
	}
	return s.captured, nil
}

// assemble returns the certificate with sig (the group's signature of tbs).
func assemble(tmpl, parent *x509.Certificate, pub ed25519.PublicKey, caKey ed25519.PublicKey, tbs, sig []byte) ([]byte, error) {
	s := &tbsSigner{key: caKey, want: tbs, sig: sig}
	der, err := x509.CreateCertificate(nil, tmpl, parent, pub, s)
	if err != nil {
		return nil, fmt.Errorf("tca: assembling the certificate: %w", err)
	}
	return der, nil
}

// Leaf parameters a requester asks for and every signer checks.
type leafParams struct {
	SPIFFEID  spiffeid.ID
	Key       pki.Identity
	Serial    [16]byte
	NotBefore time.Time
	NotAfter  time.Time
	Nonce     uint64 // the key's proof-of-work nonce, in the subject as in every node certificate
}

// leafTemplate is the X509-SVID for p: one URI SAN, not a CA,
// digitalSignature only, the requester's identity key, and its
// proof-of-work nonce as the subject serialNumber (pki.PoWSerialNumber), so
// the leaf passes the handshake's proof-of-work check when presented.
func leafTemplate(p leafParams) *x509.Certificate {
	serial := new(big.Int).SetBytes(p.Serial[:])
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{SerialNumber: pki.PoWSerialNumber(p.Nonce)},
		NotBefore:             p.NotBefore,
		NotAfter:              p.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{p.SPIFFEID.URL()},
	}
}

// Limits a signer enforces on what it signs.
const clockSkew = 5 * time.Minute

// checkCSR validates a request against the CA: the SPIFFE ID is in the
// CA's trust domain and names from (the requester's authenticated
// identity), the serial is positive, and the validity starts about now
// and lasts at most maxValidity and never past the CA's own.
func checkCSR(ca *CA, from pki.Identity, m *csrMsg, now time.Time, maxValidity time.Duration) (leafParams, error) {
	var p leafParams
	id, _, err := pki.ValidateSPIFFEID(m.SPIFFEID, ca.TrustDomain.Name())
	if err != nil {
		return p, err
	}
	if id != from {
		return p, fmt.Errorf("tca: SPIFFE ID names %s, the requester is %s", id.Short(), from.Short())
	}
	p.SPIFFEID, _ = spiffeid.FromString(m.SPIFFEID)
	p.Key = from
	p.Serial = m.Serial
	p.Nonce = m.Nonce
	if p.Serial[0]&0x80 != 0 || p.Serial == ([16]byte{}) {
		return p, errors.New("tca: serial must be positive and below 2^127")
	}
	if m.NotBefore > 1<<40 || m.NotAfter > 1<<40 {
		return p, errors.New("tca: validity out of range")
	}
	p.NotBefore, p.NotAfter = time.Unix(int64(m.NotBefore), 0).UTC(), time.Unix(int64(m.NotAfter), 0).UTC()
	switch {
	case p.NotBefore.Before(now.Add(-clockSkew)) || p.NotBefore.After(now.Add(clockSkew)):
		return p, fmt.Errorf("tca: not-before %s is not within %v of now", p.NotBefore.Format(time.RFC3339), clockSkew)
	case !p.NotAfter.After(p.NotBefore):
		return p, errors.New("tca: not-after must follow not-before")
	case p.NotAfter.Sub(p.NotBefore) > maxValidity:
		return p, fmt.Errorf("tca: validity %v above the signers' limit %v", p.NotAfter.Sub(p.NotBefore), maxValidity)
	case p.NotAfter.After(ca.Cert.NotAfter) || p.NotBefore.Before(ca.Cert.NotBefore):
		return p, errors.New("tca: validity outside the CA certificate's")
	}
	return p, nil
}

// leafTBS is the TBSCertificate of p under ca.
func leafTBS(ca *CA, p leafParams) ([]byte, error) {
	return buildTBS(leafTemplate(p), ca.Cert, p.Key.PublicKey(), ca.GroupKey)
}

// VerifyLeaf checks leaf against ca as a relying party would: an X509-SVID
// (go-spiffe's x509svid.Verify with ca as the trust domain's bundle) whose
// SPIFFE ID names the certificate's own key (pki.VerifyMember). It returns
// that ID and the identity.
func VerifyLeaf(leaf *x509.Certificate, ca *CA, now time.Time) (spiffeid.ID, pki.Identity, error) {
	info, err := pki.VerifyMember(leaf, ca.Cert, ca.TrustDomain, now)
	if err != nil {
		return spiffeid.ID{}, pki.Identity{}, err
	}
	return info.SPIFFEID, info.Identity, nil
}
