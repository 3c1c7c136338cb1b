//go:build !windows

package smartsock

import "syscall"

func errnoKind(e syscall.Errno) txErrKind {
	switch e {
	case syscall.ENETUNREACH:
		return txErrNetUnreach
	case syscall.EHOSTUNREACH, syscall.EHOSTDOWN:
		return txErrHostUnreach
	case syscall.ENETDOWN:
		return txErrNetDown
	case syscall.EADDRNOTAVAIL:
		return txErrAddrNotAvail
	case syscall.ENOBUFS:
		return txErrNoBufs
	case syscall.EPERM, syscall.EACCES: // a firewall's reject
		return txErrPerm
	}
	return txErrNone
}
