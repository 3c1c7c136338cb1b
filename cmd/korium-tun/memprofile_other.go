//go:build !unix

package main

import "os"

// memProfileSignals: none here; KORIUM_TUN_MEMPROFILE is written at start
// and at exit only.
var memProfileSignals []os.Signal
