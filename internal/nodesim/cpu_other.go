//go:build !unix

package nodesim

import "time"

// cpuTime is unknown here: the CPU figures read zero.
func cpuTime() time.Duration { return 0 }
