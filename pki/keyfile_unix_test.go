//go:build unix

package pki

import (
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
		t.Skip(err)
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
