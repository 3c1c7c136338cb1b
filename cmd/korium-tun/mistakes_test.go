//go:build linux

package main

import (
	"os"
	"path/filepath"
	"testing"
)

// `up --control PATH` never deletes what is at PATH unless it is a stale
// socket: a key file given by mistake is refused before anything is set up,
// and left as it was.
func TestUpControlPathIsNotASocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: `up` checks for root first")
	}
	dir := t.TempDir()
	victim := filepath.Join(dir, "key")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := run(t, "up", "--key", filepath.Join(dir, "k"), "--pow-bits", "4", "--listen", "127.0.0.1:0", "--control", victim)
	oneLine(t, err, "is a regular file, not a socket: refusing to replace it")
	t.Log(err)
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious" {
		t.Fatalf("the file at --control was touched: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "k")); err == nil {
		t.Fatal("a key was created although --control was wrong")
	}
}

// --key "" and a dangling link get clear errors from every command.
func TestKeyPathMistakes(t *testing.T) {
	dir := t.TempDir()
	dangling := filepath.Join(dir, "dangling")
	os.Symlink(filepath.Join(dir, "gone"), dangling)
	for _, args := range [][]string{
		{"id", "--key", ""},
		{"keygen", "--key", "", "--pow-bits", "1"},
	} {
		_, err := run(t, args...)
		oneLine(t, err, "key file path is empty")
		t.Log(err)
	}
	_, err := run(t, "id", "--key", dangling)
	oneLine(t, err, "which does not exist")
	t.Log(err)
	_, err = run(t, "keygen", "--key", dangling, "--pow-bits", "1")
	oneLine(t, err, "is a symbolic link to")
	t.Log(err)
	if _, err := os.Lstat(filepath.Join(dir, "gone")); err == nil {
		t.Fatal("keygen wrote through a dangling link")
	}
}
