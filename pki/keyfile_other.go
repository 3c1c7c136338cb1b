//go:build !unix

package pki

import (
	"errors"
	"io/fs"
	"os"
)

// keyOpenFlags: there is no O_NOFOLLOW here; Lstat refuses symbolic links.
const keyOpenFlags = os.O_RDONLY

// errLoop never matches here.
var errLoop = errors.New("no ELOOP")

// checkKeyOwner has no ownership to check off Unix.
func checkKeyOwner(string, fs.FileInfo) error { return nil }

// ownedByUs is true off Unix: the directory's permissions protect it.
func ownedByUs(fs.FileInfo) bool { return true }
