package main

import (
	"fmt"
	"sync/atomic"

	"github.com/korium/korium-tun/overlay/netstack"
)

// countingStack is the node's netstack device, counting how the overlay's
// packet loop batches its Read and Write calls (for -v). Embedding keeps
// Dial and Listen, which is how the node recognizes a netstack device.
type countingStack struct {
	*netstack.Stack
	reads, readPkts, writes, writePkts atomic.Uint64
}

func (c *countingStack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := c.Stack.Read(bufs, sizes, offset)
	c.reads.Add(1)
	c.readPkts.Add(uint64(n))
	return n, err
}

func (c *countingStack) Write(bufs [][]byte, offset int) (int, error) {
	c.writes.Add(1)
	c.writePkts.Add(uint64(len(bufs)))
	return c.Stack.Write(bufs, offset)
}

func (c *countingStack) String() string {
	per := func(p, calls uint64) float64 {
		if calls == 0 {
			return 0
		}
		return float64(p) / float64(calls)
	}
	return fmt.Sprintf("device reads %d (%.1f pkts each), writes %d (%.1f pkts each)",
		c.reads.Load(), per(c.readPkts.Load(), c.reads.Load()), c.writes.Load(), per(c.writePkts.Load(), c.writes.Load()))
}
