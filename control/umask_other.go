//go:build !unix

package control

// umask has no counterpart off Unix: the socket's directory permissions are
// what protect it there.
func umask(m int) int { return m }
