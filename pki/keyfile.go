package pki

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
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

// errEmptyPath is returned for a key file path of "".
var errEmptyPath = errors.New("the key file path is empty: pass --key FILE")

// LoadKeyFile reads a key file. It refuses a file that group or others can
// read or write, one owned by another user than us or root, one that is
// not a regular file, a symbolic link (never followed), and a truncated or
// malformed one; every error names the file and says what to do.
func LoadKeyFile(path string) (*Keypair, error) {
	if path == "" {
		return nil, errEmptyPath
	}
	lst, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key file %s does not exist: create one with `korium-tun keygen --key %s`", path, path)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open key file %s: %v (check the path and its permissions)", path, errors.Unwrap(err))
	}
	if lst.Mode().Type() == fs.ModeSymlink {
		return nil, symlinkError(path)
	}
	f, err := os.OpenFile(path, keyOpenFlags, 0)
	if err != nil {
		if errors.Is(err, errLoop) {
			return nil, symlinkError(path)
		}
		return nil, fmt.Errorf("cannot open key file %s: %v (check the path and its permissions)", path, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat key file %s: %v", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file (it is %s): pass the key file itself with --key", path, typeName(st.Mode()))
	}
	if err := checkKeyOwner(path, st); err != nil {
		return nil, err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is accessible by group or others (mode %04o): run `chmod 600 %s`", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read key file %s: %v", path, err)
	}
	kp, err := DecodeKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s is corrupt (%v): restore it from a backup or generate a new identity with `korium-tun keygen --key NEWFILE`", path, err)
	}
	return kp, nil
}

// typeName names a file type that is not a regular file, for errors.
func typeName(m fs.FileMode) string {
	switch t := m.Type(); {
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case t&fs.ModeSocket != 0:
		return "a socket"
	case t&fs.ModeDevice != 0:
		return "a device"
	default:
		return "a special file"
	}
}

// symlinkError says that path is a symbolic link, and whether it dangles.
func symlinkError(path string) error {
	to, err := os.Readlink(path)
	if err != nil {
		return fmt.Errorf("key file %s is a symbolic link: key files are never followed through links; pass the file itself with --key", path)
	}
	target := to
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(path), target)
	}
	if _, err := os.Stat(target); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("key file %s is a symbolic link to %s, which does not exist: key files are never followed through links; pass the real file with --key", path, to)
	}
	return fmt.Errorf("key file %s is a symbolic link to %s: key files are never followed through links; pass the real file with --key", path, to)
}

// CheckNewKeyPath returns nil when SaveKeyFile may create a key file at
// path: nothing is there (not even a dangling link). Its errors wrap
// ErrKeyFileExists and say what is there.
func CheckNewKeyPath(path string) error {
	if path == "" {
		return errEmptyPath
	}
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot check key file path %s: %v", path, errors.Unwrap(err))
	}
	if st.Mode().Type() == fs.ModeSymlink {
		to, _ := os.Readlink(path)
		return fmt.Errorf("%w: %s is a symbolic link to %s (refusing to write an identity through a link; choose another path)", ErrKeyFileExists, path, to)
	}
	return fmt.Errorf("%w: %s (refusing to overwrite an identity; choose another path)", ErrKeyFileExists, path)
}

// tempKeyPrefix names SaveKeyFile's temporary files.
const tempKeyPrefix = ".korium-key-"

// staleTempAge is when a temporary key file is certainly left over from a
// SaveKeyFile that was killed (one lives for milliseconds).
const staleTempAge = time.Minute

// removeStaleTemps deletes temporary key files in dir that a SaveKeyFile
// killed between creating and removing them left behind: they hold a
// private key. Only regular files of ours older than staleTempAge go.
func removeStaleTemps(dir string) {
	names, err := filepath.Glob(filepath.Join(dir, tempKeyPrefix+"*"))
	if err != nil {
		return
	}
	for _, name := range names {
		st, err := os.Lstat(name)
		if err != nil || !st.Mode().IsRegular() || !ownedByUs(st) || time.Since(st.ModTime()) < staleTempAge {
			continue
		}
		os.Remove(name)
	}
}

// SaveKeyFile writes kp to path atomically with mode 0600 and never replaces
// an existing file: the bytes go to a temporary file in the same directory,
// are synced, and are then hard-linked into place (link fails if path exists,
// unlike rename). A crash leaves either no key file or a complete one.
func SaveKeyFile(path string, kp *Keypair) (err error) {
	if err := CheckNewKeyPath(path); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create directory for key file %s: %v", path, err)
	}
	removeStaleTemps(dir)
	tmp, err := os.CreateTemp(dir, tempKeyPrefix+"*")
	if err != nil {
		return fmt.Errorf("cannot write key file %s: %v", path, err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("cannot set mode 0600 on key file %s: %v", path, err)
	}
	if _, err := tmp.Write(EncodeKeyFile(kp)); err != nil {
		return fmt.Errorf("cannot write key file %s: %v", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("cannot sync key file %s: %v", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s (refusing to overwrite an identity)", ErrKeyFileExists, path)
		}
		return fmt.Errorf("cannot create key file %s: %v", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// LoadOrCreateKeyFile loads path, or if it does not exist generates a key
// with powBits bits and saves it. created reports which happened.
func LoadOrCreateKeyFile(ctx context.Context, path string, powBits int) (kp *Keypair, created bool, err error) {
	if path == "" {
		return nil, false, errEmptyPath
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
