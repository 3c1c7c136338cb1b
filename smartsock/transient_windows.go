package smartsock

import (
	"syscall"

	"golang.org/x/sys/windows"
)

func errnoKind(e syscall.Errno) txErrKind {
	switch e {
	case windows.WSAENETUNREACH:
		return txErrNetUnreach
	case windows.WSAEHOSTUNREACH, windows.WSAEHOSTDOWN:
		return txErrHostUnreach
	case windows.WSAENETDOWN:
		return txErrNetDown
	case windows.WSAEADDRNOTAVAIL:
		return txErrAddrNotAvail
	case windows.WSAENOBUFS:
		return txErrNoBufs
	case windows.WSAEACCES:
		return txErrPerm
	}
	return txErrNone
}
