//go:build !race

package quicbench

const raceEnabled = false
