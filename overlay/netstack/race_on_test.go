//go:build race

package netstack

// raceEnabled: the race detector makes sync.Pool drop a share of what is
// put back, so code that takes buffers from gVisor's pools allocates.
const raceEnabled = true
