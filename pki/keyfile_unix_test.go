//go:build unix

package pki

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A key path that is a FIFO is refused at once, not waited on for a writer.
func TestLoadKeyFileRefusesFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatalf("making the FIFO the test needs: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := LoadKeyFile(path); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("LoadKeyFile(fifo) = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("LoadKeyFile blocked on a FIFO")
	}
}

func savedKey(t *testing.T, path string) *Keypair {
	t.Helper()
	kp, err := GenerateKeypair(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := SaveKeyFile(path, kp); err != nil {
		t.Fatal(err)
	}
	return kp
}

func wantErr(t *testing.T, err error, want, notWant string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) || (notWant != "" && strings.Contains(err.Error(), notWant)) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %v: want one line with %q and without %q", err, want, notWant)
	}
	t.Logf("%v", err)
}

// A key path that is a symbolic link is never followed, whether its target
// exists (even a readable one: no chmod advice about the target) or not;
// nothing is written through a link.
func TestKeyFileSymlinksNotFollowed(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	savedKey(t, real)
	os.Chmod(real, 0o644)
	link := filepath.Join(dir, "link")
	os.Symlink(real, link)
	_, err := LoadKeyFile(link)
	wantErr(t, err, "is a symbolic link to "+real, "chmod")
	_, _, err = LoadOrCreateKeyFile(context.Background(), link, 1)
	wantErr(t, err, "is a symbolic link to "+real, "chmod")

	dangling := filepath.Join(dir, "dangling")
	missing := filepath.Join(dir, "missing")
	os.Symlink(missing, dangling)
	_, err = LoadKeyFile(dangling)
	wantErr(t, err, "is a symbolic link to "+missing+", which does not exist", "keygen")
	_, _, err = LoadOrCreateKeyFile(context.Background(), dangling, 1)
	wantErr(t, err, "which does not exist", "")
	kp, _ := GenerateKeypair(context.Background(), 1)
	err = SaveKeyFile(dangling, kp)
	wantErr(t, err, "is a symbolic link to "+missing, "")
	if !errors.Is(err, ErrKeyFileExists) {
		t.Fatal("SaveKeyFile through a link: not ErrKeyFileExists")
	}
	if _, err := os.Lstat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a key was written through a dangling link")
	}
}

// An empty key path is a clear error everywhere, not "does not exist".
func TestKeyFileEmptyPath(t *testing.T) {
	_, err := LoadKeyFile("")
	wantErr(t, err, "key file path is empty", "")
	_, _, err = LoadOrCreateKeyFile(context.Background(), "", 1)
	wantErr(t, err, "key file path is empty", "")
	kp, _ := GenerateKeypair(context.Background(), 1)
	wantErr(t, SaveKeyFile("", kp), "key file path is empty", "")
	wantErr(t, CheckNewKeyPath(""), "key file path is empty", "")
}

// A key file owned by another non-root user is refused (it controls our
// identity); one of ours or root's is loaded.
func TestKeyFileOwnedByAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	want := savedKey(t, path)
	if kp, err := LoadKeyFile(path); err != nil || kp.Identity() != want.Identity() {
		t.Fatalf("root's own key: %v", err)
	}
	if err := os.Chown(path, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKeyFile(path)
	wantErr(t, err, "belongs to user 4242, not to root", "")
	_, _, err = LoadOrCreateKeyFile(context.Background(), path, 1)
	wantErr(t, err, "belongs to user 4242", "")
}

// A temporary key left behind by a keygen killed mid-write (it holds a
// private key) is removed by the next keygen or `up` in that directory;
// one that may belong to a keygen running right now is kept.
func TestStaleTemporaryKeyRemoved(t *testing.T) {
	for _, via := range []string{"save", "up"} {
		dir := t.TempDir()
		stale := filepath.Join(dir, ".korium-private-123456")
		legacy := filepath.Join(dir, ".korium-key-123456") // from before privfile.go
		fresh := filepath.Join(dir, ".korium-private-654321")
		for _, p := range []string{stale, legacy, fresh} {
			if err := os.WriteFile(p, []byte("korium-tun-key v1\nseed ...\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		old := time.Now().Add(-time.Hour)
		os.Chtimes(stale, old, old)
		os.Chtimes(legacy, old, old)
		if via == "save" {
			savedKey(t, filepath.Join(dir, "k"))
		} else if _, _, err := LoadOrCreateKeyFile(context.Background(), filepath.Join(dir, "k"), 1); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{stale, legacy} {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s: the stale temporary key %s is still there", via, filepath.Base(p))
			}
		}
		if _, err := os.Lstat(fresh); err != nil {
			t.Fatalf("%s: a fresh temporary key was removed", via)
		}
		left, _ := filepath.Glob(filepath.Join(dir, ".korium-*"))
		if len(left) != 1 {
			t.Fatalf("%s: temporary files left: %v", via, left)
		}
	}
}

// A key path that is a directory or socket is refused with what it is.
func TestKeyFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadKeyFile(dir)
	wantErr(t, err, "is not a regular file (it is a directory)", "")
}
