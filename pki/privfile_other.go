//go:build !unix

package pki

import (
	"errors"
	"io/fs"
	"os"
)

// privOpenFlags: there is no O_NOFOLLOW here; Lstat refuses symbolic links.
const privOpenFlags = os.O_RDONLY

// errLoop never matches here.
var errLoop = errors.New("no ELOOP")

// checkOwner has no ownership to check off Unix.
func checkOwner(string, fs.FileInfo) error { return nil }

// ownedByUs is true off Unix: the directory's permissions protect it.
func ownedByUs(fs.FileInfo) bool { return true }
