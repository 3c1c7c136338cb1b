package pki

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// Key file format (text, one field per line, nothing else):
//
//	korium-tun-key v1
//	seed <64 lowercase hex: the Ed25519 private seed>
//	nonce <decimal proof-of-work nonce>
//
// The file is created with mode 0600 and never rewritten.
const keyFileHeader = "korium-tun-key v1"

// maxKeyFileSize bounds what LoadKeyFile reads: a valid file is ~110 bytes.
const maxKeyFileSize = 1024

// ErrKeyFileExists is returned by SaveKeyFile when the path is taken.
var ErrKeyFileExists = errors.New("key file already exists")

// EncodeKeyFile returns the key file bytes for kp.
func EncodeKeyFile(kp *Keypair) []byte {
	var b bytes.Buffer
	b.WriteString(keyFileHeader + "\n")
	b.WriteString("seed " + hex.EncodeToString(kp.priv.Seed()) + "\n")
	b.WriteString("nonce " + strconv.FormatUint(kp.nonce, 10) + "\n")
	return b.Bytes()
}

// DecodeKeyFile parses key file bytes. It accepts exactly the format written
// by EncodeKeyFile; a truncated or altered file is an error.
func DecodeKeyFile(data []byte) (*Keypair, error) {
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%d bytes, a key file has about 110", len(data))
	}
	lines := bytes.Split(data, []byte("\n"))
	if len(lines) != 4 || len(lines[3]) != 0 {
		return nil, errors.New("truncated or malformed: want 3 lines ending in a newline")
	}
	if string(lines[0]) != keyFileHeader {
		return nil, fmt.Errorf("first line is not %q", keyFileHeader)
	}
	seedHex, ok := bytes.CutPrefix(lines[1], []byte("seed "))
	if !ok || len(seedHex) != 64 {
		return nil, errors.New("line 2 is not \"seed <64 hex>\"")
	}
	seed := make([]byte, 32)
	if _, err := hex.Decode(seed, seedHex); err != nil || !bytes.Equal(bytes.ToLower(seedHex), seedHex) {
		return nil, errors.New("line 2: seed is not lowercase hex")
	}
	nonceText, ok := bytes.CutPrefix(lines[2], []byte("nonce "))
	if !ok {
		return nil, errors.New("line 3 is not \"nonce <decimal>\"")
	}
	nonce, err := strconv.ParseUint(string(nonceText), 10, 64)
	if err != nil || strconv.FormatUint(nonce, 10) != string(nonceText) {
		return nil, errors.New("line 3: nonce is not a canonical decimal number")
	}
	return NewKeypair(seed, nonce)
}

// errEmptyKeyPath is returned for a key file path of "".
var errEmptyKeyPath = errors.New("the key file path is empty: pass --key FILE")

// LoadKeyFile reads a key file. It refuses (ReadPrivateFile) a file that
// group or others can read or write, one owned by another user than us or
// root, one that is not a regular file, a symbolic link (never followed),
// and a truncated or malformed one; every error names the file and says
// what to do.
func LoadKeyFile(path string) (*Keypair, error) {
	if path == "" {
		return nil, errEmptyKeyPath
	}
	data, err := ReadPrivateFile(path, maxKeyFileSize)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("key file %s does not exist: create one with `korium-tun keygen --key %s`", path, path)
		}
		if errors.Is(err, ErrFileTooLarge) {
			return nil, fmt.Errorf("key file %s is corrupt (more than %d bytes, a key file has about 110): restore it from a backup or generate a new identity with `korium-tun keygen --key NEWFILE`", path, maxKeyFileSize)
		}
		return nil, fmt.Errorf("key file: %w", err)
	}
	kp, err := DecodeKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s is corrupt (%v): restore it from a backup or generate a new identity with `korium-tun keygen --key NEWFILE`", path, err)
	}
	return kp, nil
}

// SaveKeyFile writes kp to path atomically with mode 0600 and never replaces
// an existing file: the bytes go to a temporary file in the same directory,
// are synced, and are then hard-linked into place (link fails if path exists,
// unlike rename). A crash leaves either no key file or a complete one.
func SaveKeyFile(path string, kp *Keypair) error {
	if err := CheckNewKeyPath(path); err != nil {
		return err
	}
	err := CreatePrivateFile(path, EncodeKeyFile(kp))
	if errors.Is(err, ErrFileExists) {
		return fmt.Errorf("%w: %s (refusing to overwrite an identity)", ErrKeyFileExists, path)
	}
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	return nil
}

// CheckNewKeyPath returns nil when SaveKeyFile may create a key file at
// path: nothing is there, not even a dangling link. Its errors wrap
// ErrKeyFileExists and say what is there.
func CheckNewKeyPath(path string) error {
	if path == "" {
		return errEmptyKeyPath
	}
	what, err := takenBy(path)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if what != "" {
		return fmt.Errorf("%w: %s", ErrKeyFileExists, what)
	}
	return nil
}

// LoadOrCreateKeyFile loads path, or if it does not exist generates a key
// with powBits bits and saves it. created reports which happened. A
// temporary key a killed keygen left in the directory is removed first.
func LoadOrCreateKeyFile(ctx context.Context, path string, powBits int) (kp *Keypair, created bool, err error) {
	if path == "" {
		return nil, false, errEmptyKeyPath
	}
	removeStaleTemps(filepath.Dir(path))
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		kp, err := GenerateKeypair(ctx, powBits)
		if err != nil {
			return nil, false, err
		}
		if err := SaveKeyFile(path, kp); err != nil {
			if errors.Is(err, ErrKeyFileExists) { // lost a race: use the winner's key
				kp, err = LoadKeyFile(path)
				return kp, false, err
			}
			return nil, false, err
		}
		return kp, true, nil
	}
	kp, err = LoadKeyFile(path)
	return kp, false, err
}
