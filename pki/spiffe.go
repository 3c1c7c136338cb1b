package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SPIFFE IDs are interoperability metadata bound to the identity, never a
// second identity: spiffe://{trust_domain}/{identity_hex}[/{workload_path}].
// Parsing and the rules (lowercase trust domain, no empty, "." or ".."
// segments, no query or fragment) are go-spiffe's spiffeid.

// ErrBadSPIFFE is wrapped by every SPIFFE ID that is malformed, names
// another trust domain, or does not start with an identity.
var ErrBadSPIFFE = errors.New("bad SPIFFE ID")

// ErrSPIFFEMismatch is wrapped when a certificate's SPIFFE ID names an
// identity other than its key: the handshake refuses such a peer.
var ErrSPIFFEMismatch = errors.New("SPIFFE ID names another identity than the certificate key")

// SPIFFEConfig names a node's trust domain and optional workload path. The
// zero value means no SPIFFE ID.
type SPIFFEConfig struct {
	TrustDomain string // e.g. "prod.example.com"
	Workload    string // e.g. "api-gateway" or "team/api" (leading slash optional)
}

// Enabled reports whether a trust domain is set.
func (c SPIFFEConfig) Enabled() bool { return c.TrustDomain != "" }

// Check validates the trust domain and workload path.
func (c SPIFFEConfig) Check() error {
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil || strings.Contains(c.TrustDomain, "/") {
		return fmt.Errorf("%w: trust domain %q: %v (want a lowercase name such as prod.example.com)", ErrBadSPIFFE, clip(c.TrustDomain), err)
	}
	if _, err := c.workloadPath(); err != nil {
		return err
	}
	return nil
}

func (c SPIFFEConfig) workloadPath() (string, error) {
	if c.Workload == "" {
		return "", nil
	}
	p := "/" + strings.TrimPrefix(c.Workload, "/")
	if err := spiffeid.ValidatePath(p); err != nil {
		return "", fmt.Errorf("%w: workload path %q: %v (want segments of letters, digits, '.', '-', '_' separated by '/')", ErrBadSPIFFE, clip(c.Workload), err)
	}
	return p, nil
}

// ID returns id's SPIFFE ID in this trust domain.
func (c SPIFFEConfig) ID(id Identity) (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: trust domain %q: %v", ErrBadSPIFFE, clip(c.TrustDomain), err)
	}
	wl, err := c.workloadPath()
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromPath(td, "/"+id.String()+wl)
}

// CertificateWithSPIFFE is Certificate with c's SPIFFE ID for kp as the one
// URI SAN (none when c has no trust domain).
func CertificateWithSPIFFE(kp *Keypair, c SPIFFEConfig) (tls.Certificate, error) {
	var uris []*url.URL
	if c.Enabled() {
		sid, err := c.ID(kp.Identity())
		if err != nil {
			return tls.Certificate{}, err
		}
		uris = []*url.URL{sid.URL()}
	}
	return selfSigned(kp, uris)
}

// ExtractSPIFFEID returns the SPIFFE ID of cert: found is false when it
// has no spiffe URI SAN; an error means more than one URI SAN or a
// malformed spiffe one (a certificate that is no valid SVID).
func ExtractSPIFFEID(cert *x509.Certificate) (id spiffeid.ID, found bool, err error) {
	spiffe := 0
	for _, u := range cert.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			spiffe++
		}
	}
	if spiffe == 0 {
		return spiffeid.ID{}, false, nil
	}
	if len(cert.URIs) != 1 {
		return spiffeid.ID{}, true, fmt.Errorf("%w: %d URI SANs, an SVID has exactly one", ErrBadSPIFFE, len(cert.URIs))
	}
	id, err = spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return spiffeid.ID{}, true, fmt.Errorf("%w: %v", ErrBadSPIFFE, err)
	}
	return id, true, nil
}

// ExtractSPIFFEIDFromDER is ExtractSPIFFEID for a DER certificate.
func ExtractSPIFFEIDFromDER(der []byte) (spiffeid.ID, bool, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return spiffeid.ID{}, false, fmt.Errorf("%w: %v", ErrBadSPIFFE, err)
	}
	return ExtractSPIFFEID(cert)
}

// ValidateSPIFFEID parses s, requires it to be in trustDomain, and returns
// the identity its first path segment names (a valid key) and the workload
// path after it ("" or "/a/b").
func ValidateSPIFFEID(s, trustDomain string) (Identity, string, error) {
	if len(s) > 2048 {
		return Identity{}, "", fmt.Errorf("%w: %d bytes", ErrBadSPIFFE, len(s))
	}
	sid, err := spiffeid.FromString(s)
	if err != nil {
		return Identity{}, "", fmt.Errorf("%w %q: %v", ErrBadSPIFFE, clip(s), err)
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return Identity{}, "", fmt.Errorf("%w: trust domain %q: %v", ErrBadSPIFFE, clip(trustDomain), err)
	}
	if !sid.MemberOf(td) {
		return Identity{}, "", fmt.Errorf("%w %q: not in trust domain %s", ErrBadSPIFFE, clip(s), td)
	}
	return identityOfSPIFFE(sid)
}

// identityOfSPIFFE splits a parsed ID's path into identity and workload.
func identityOfSPIFFE(sid spiffeid.ID) (Identity, string, error) {
	path := strings.TrimPrefix(sid.Path(), "/")
	first, rest, _ := strings.Cut(path, "/")
	id, err := ParseIdentity(first)
	if err != nil {
		return Identity{}, "", fmt.Errorf("%w %q: the path must start with an identity: %v", ErrBadSPIFFE, clip(sid.String()), err)
	}
	if rest != "" {
		rest = "/" + rest
	}
	return id, rest, nil
}

// checkCertSPIFFE refuses a certificate whose SPIFFE ID is malformed or
// names an identity other than its key id.
func checkCertSPIFFE(cert *x509.Certificate, id Identity) error {
	sid, found, err := ExtractSPIFFEID(cert)
	if !found {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSPIFFEMismatch, err)
	}
	named, _, err := identityOfSPIFFE(sid)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSPIFFEMismatch, err)
	}
	if named != id {
		return fmt.Errorf("%w: %s names %s, the key is %s", ErrSPIFFEMismatch, clip(sid.String()), named.Short(), id.Short())
	}
	return nil
}

// PeerSPIFFEID returns the SPIFFE ID of a completed handshake's peer, or ""
// (already checked against its key by the handshake).
func PeerSPIFFEID(certs []*x509.Certificate) string {
	if len(certs) != 1 {
		return ""
	}
	sid, found, err := ExtractSPIFFEID(certs[0])
	if !found || err != nil {
		return ""
	}
	return sid.String()
}
