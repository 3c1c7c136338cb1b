//go:build unix

package main

import (
	"os"
	"syscall"
)

// memProfileSignals ask for a KORIUM_TUN_MEMPROFILE snapshot.
var memProfileSignals = []os.Signal{syscall.SIGUSR1}
