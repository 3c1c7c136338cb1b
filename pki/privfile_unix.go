//go:build unix

package pki

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// privOpenFlags: O_NOFOLLOW, a path that is a symbolic link is never
// followed (Lstat has refused it already; this closes the race with a
// swap); O_NONBLOCK, opening a FIFO must not wait for a writer before the
// regular-file check refuses it. Regular files ignore O_NONBLOCK.
const privOpenFlags = os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK

// errLoop is what open(O_NOFOLLOW) returns for a symbolic link.
var errLoop error = syscall.ELOOP

// checkOwner refuses a private file owned by another user than us or root:
// whoever owns it can read or replace the secret.
func checkOwner(path string, st fs.FileInfo) error {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	uid, me := int(sys.Uid), os.Geteuid()
	if uid == 0 || uid == me {
		return nil
	}
	who := fmt.Sprintf("you (user %d) or root", me)
	if me == 0 {
		who = "root"
	}
	return fmt.Errorf("%s belongs to user %d, not to %s: refusing a secret another user controls (if it is yours, `chown %d %s`)", path, uid, who, me, path)
}

// ownedByUs reports whether we own the file st describes.
func ownedByUs(st fs.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(sys.Uid) == os.Geteuid()
}
