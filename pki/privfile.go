package pki

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Private files (the key, a CA signer's state) follow one set of rules:
// created once with mode 0600 through a synced temporary file hard-linked
// into place; read only when they are regular files (never through a
// symbolic link), owned by us or root, and closed to group and others. A
// temporary file a killed writer left behind (it holds the secret) is
// removed by the next writer or reader in that directory.

// ErrFileExists is returned by CreatePrivateFile when path is taken.
var ErrFileExists = errors.New("file already exists")

// ErrFileTooLarge is wrapped by ReadPrivateFile for a file above its limit.
var ErrFileTooLarge = errors.New("file too large")

// errEmptyPath is returned for a private file path of "".
var errEmptyPath = errors.New("the path is empty")

// Temporary files of CreatePrivateFile, and of SaveKeyFile before it.
const (
	tempPrefix       = ".korium-private-"
	legacyTempPrefix = ".korium-key-"
)

// staleTempAge is when a temporary file is certainly left over from a
// writer that was killed (one lives for milliseconds).
const staleTempAge = time.Minute

// CheckNewPath returns nil when CreatePrivateFile may create a file at
// path: nothing is there, not even a dangling link. Its errors wrap
// ErrFileExists (except for an empty path) and say what is there.
func CheckNewPath(path string) error {
	what, err := takenBy(path)
	if err != nil || what == "" {
		return err
	}
	return fmt.Errorf("%w: %s", ErrFileExists, what)
}

// takenBy says what is at path ("" when nothing is).
func takenBy(path string) (string, error) {
	if path == "" {
		return "", errEmptyPath
	}
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("cannot check %s: %v", path, errors.Unwrap(err))
	}
	if st.Mode().Type() == fs.ModeSymlink {
		to, _ := os.Readlink(path)
		return fmt.Sprintf("%s is a symbolic link to %s (refusing to write through a link; choose another path)", path, to), nil
	}
	return fmt.Sprintf("%s (refusing to overwrite it; choose another path)", path), nil
}

// CreatePrivateFile writes data to a new file at path with mode 0600,
// atomically, refusing to replace anything at path (a link included).
func CreatePrivateFile(path string, data []byte) error {
	if err := CheckNewPath(path); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create directory for %s: %v", path, err)
	}
	removeStaleTemps(dir)
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
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
// and others cannot access, owned by us or root. A symbolic link is never
// followed (Lstat refuses it; O_NOFOLLOW closes the race with a swap), and
// opening a FIFO does not wait for a writer (O_NONBLOCK).
func ReadPrivateFile(path string, limit int) ([]byte, error) {
	if path == "" {
		return nil, errEmptyPath
	}
	lst, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot open %s: %v (check the path and its permissions)", path, errors.Unwrap(err))
	}
	if lst.Mode().Type() == fs.ModeSymlink {
		return nil, symlinkError(path)
	}
	f, err := os.OpenFile(path, privOpenFlags, 0)
	if err != nil {
		if errors.Is(err, errLoop) {
			return nil, symlinkError(path)
		}
		return nil, fmt.Errorf("cannot open %s: %v (check the path and its permissions)", path, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat %s: %v", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (it is %s): pass the file itself", path, typeName(st.Mode()))
	}
	if err := checkOwner(path, st); err != nil {
		return nil, err
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
		return fmt.Errorf("%s is a symbolic link: private files are never read through links; pass the file itself", path)
	}
	target := to
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(path), target)
	}
	if _, err := os.Stat(target); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is a symbolic link to %s, which does not exist: private files are never read through links; pass the real file", path, to)
	}
	return fmt.Errorf("%s is a symbolic link to %s: private files are never read through links; pass the real file", path, to)
}

// removeStaleTemps deletes temporary files in dir that a writer killed
// between creating and removing them left behind: they hold a secret.
// Only regular files of ours older than staleTempAge go.
func removeStaleTemps(dir string) {
	for _, prefix := range []string{tempPrefix, legacyTempPrefix} {
		names, err := filepath.Glob(filepath.Join(dir, prefix+"*"))
		if err != nil {
			continue
		}
		for _, name := range names {
			st, err := os.Lstat(name)
			if err != nil || !st.Mode().IsRegular() || !ownedByUs(st) || time.Since(st.ModTime()) < staleTempAge {
				continue
			}
			os.Remove(name)
		}
	}
}
