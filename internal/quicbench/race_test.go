//go:build race

package quicbench

// The race detector allocates on its own: allocation counts mean nothing.
const raceEnabled = true
