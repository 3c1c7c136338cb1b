package pki

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Private files other than the key (a CA signer's state) follow the key
// file's rules: created once with mode 0600 through a synced temporary
// file hard-linked into place, and read only when group and others have no
// access.

// ErrFileExists is returned by CreatePrivateFile when path is taken.
var ErrFileExists = errors.New("file already exists")

// ErrFileTooLarge is wrapped by ReadPrivateFile for a file above its limit.
var ErrFileTooLarge = errors.New("file too large")

// CreatePrivateFile writes data to a new file at path with mode 0600,
// atomically, refusing to replace an existing file.
func CreatePrivateFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%w: %s (refusing to overwrite it)", ErrFileExists, path)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create directory for %s: %v", path, err)
	}
	tmp, err := os.CreateTemp(dir, ".korium-private-*")
	if err != nil {
		return fmt.Errorf("cannot write %s: %v", path, err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("cannot set mode 0600 on %s: %v", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("cannot write %s: %v", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("cannot sync %s: %v", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s (refusing to overwrite it)", ErrFileExists, path)
		}
		return fmt.Errorf("cannot create %s: %v", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ReadPrivateFile reads a regular file of at most limit bytes that group
// and others cannot access. O_NONBLOCK: opening a FIFO must not wait for a
// writer before the regular-file check refuses it.
func ReadPrivateFile(path string, limit int) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s does not exist: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("cannot open %s: %v (check the path and its permissions)", path, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat %s: %v", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is accessible by group or others (mode %04o): run `chmod 600 %s`", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", path, err)
	}
	if len(data) > limit {
		return nil, fmt.Errorf("%s: %w: more than %d bytes", path, ErrFileTooLarge, limit)
	}
	return data, nil
}
