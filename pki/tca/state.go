package tca

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"filippo.io/edwards25519"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/pki/frost"
)

// SignerState is what a DKG leaves a signer: its secret key share and the
// CA (certificate, group key, every signer's verifying share). It is the
// reference's SignerState; keep it encrypted at rest (SaveState).
type SignerState struct {
	Identity pki.Identity // the signer's node identity
	ID       uint16       // its FROST identifier
	Secret   *edwards25519.Scalar
	CA       *CA
}

func (s *SignerState) keyShare() *frost.KeyShare {
	return &frost.KeyShare{ID: s.ID, Threshold: s.CA.Threshold, Secret: s.Secret, Group: s.CA.group, Verifying: s.CA.verifying}
}

// check verifies that the state is consistent: the identity is the CA's
// signer ID, and the secret matches its verifying share.
func (s *SignerState) check() error {
	if s.CA.SignerID(s.Identity) != s.ID || s.ID == 0 {
		return fmt.Errorf("tca: %s is not signer %d of this CA", s.Identity.Short(), s.ID)
	}
	if new(edwards25519.Point).ScalarBaseMult(s.Secret).Equal(s.CA.verifying[s.ID]) != 1 {
		return errors.New("tca: the key share does not match the CA's verifying share")
	}
	return nil
}

// State file: "KTCA" 0x01, a 24-byte nonce, then XChaCha20-Poly1305 of the
// plaintext under a key derived (HKDF-SHA256) from the node's private
// seed, with the header and the node's identity as associated data.
// Plaintext: identifier (2 bytes), secret share (32), CA certificate DER.
const (
	stateMagic   = "KTCA\x01"
	maxStateSize = maxCertSize + 128
)

func stateKey(kp *pki.Keypair) ([]byte, error) {
	return hkdf.Key(sha256.New, kp.Seed(), nil, "korium-tun ca signer state v1", chacha20poly1305.KeySize)
}

// EncodeState encrypts s for kp (whose identity it must be).
func EncodeState(s *SignerState, kp *pki.Keypair) ([]byte, error) {
	if kp.Identity() != s.Identity {
		return nil, errors.New("tca: signer state belongs to another identity")
	}
	key, err := stateKey(kp)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	plain := binary.BigEndian.AppendUint16(nil, s.ID)
	plain = append(plain, s.Secret.Bytes()...)
	plain = append(plain, s.CA.DER...)
	out := []byte(stateMagic)
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	id := kp.Identity()
	return aead.Seal(out, nonce, plain, append([]byte(stateMagic), id[:]...)), nil
}

// ErrStateKey is returned for a state file that does not decrypt: another
// node's, or altered.
var ErrStateKey = errors.New("tca: signer state does not decrypt with this node's key (another node's file, or altered)")

// DecodeState decrypts and checks a state file's bytes for kp.
func DecodeState(data []byte, kp *pki.Keypair) (*SignerState, error) {
	if len(data) > maxStateSize || len(data) < len(stateMagic)+chacha20poly1305.NonceSizeX+chacha20poly1305.Overhead {
		return nil, errors.New("tca: not a signer state file (wrong size)")
	}
	if string(data[:len(stateMagic)]) != stateMagic {
		return nil, errors.New("tca: not a signer state file (bad header)")
	}
	key, err := stateKey(kp)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	nonce := data[len(stateMagic) : len(stateMagic)+chacha20poly1305.NonceSizeX]
	id := kp.Identity()
	plain, err := aead.Open(nil, nonce, data[len(stateMagic)+chacha20poly1305.NonceSizeX:], append([]byte(stateMagic), id[:]...))
	if err != nil {
		return nil, ErrStateKey
	}
	if len(plain) < 2+frost.ScalarSize {
		return nil, errors.New("tca: signer state truncated")
	}
	s := &SignerState{Identity: id, ID: binary.BigEndian.Uint16(plain)}
	if s.Secret, err = frost.DecodeScalar(plain[2 : 2+frost.ScalarSize]); err != nil {
		return nil, err
	}
	if s.CA, err = ParseCA(plain[2+frost.ScalarSize:]); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// SaveState writes s encrypted to a new file at path (mode 0600, atomic,
// never replacing an existing file).
func SaveState(path string, s *SignerState, kp *pki.Keypair) error {
	data, err := EncodeState(s, kp)
	if err != nil {
		return err
	}
	if err := pki.CreatePrivateFile(path, data); err != nil {
		return fmt.Errorf("signer state: %w", err)
	}
	return nil
}

// LoadState reads and decrypts the signer state at path for kp.
func LoadState(path string, kp *pki.Keypair) (*SignerState, error) {
	data, err := pki.ReadPrivateFile(path, maxStateSize)
	if err != nil {
		return nil, fmt.Errorf("signer state: %w", err)
	}
	s, err := DecodeState(data, kp)
	if err != nil {
		return nil, fmt.Errorf("signer state %s: %w", path, err)
	}
	return s, nil
}

// CertPEM encodes a DER certificate as PEM.
func CertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// WriteCertPEM writes a certificate as PEM (mode 0644: it is public),
// atomically through a temporary file.
func WriteCertPEM(path string, der []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, CertPEM(der), 0o644); err != nil {
		return fmt.Errorf("cannot write %s: %v", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot write %s: %v", path, err)
	}
	return nil
}

// ReadCertPEM reads the first certificate of a PEM file.
func ReadCertPEM(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", path, err)
	}
	if len(data) > 1<<20 {
		return nil, fmt.Errorf("%s is larger than 1 MiB: not a certificate", path)
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s has no PEM CERTIFICATE block", path)
		}
		if b.Type == "CERTIFICATE" {
			return b.Bytes, nil
		}
	}
}
