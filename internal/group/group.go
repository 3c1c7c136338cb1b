// Package group runs the goroutines of one owner, whose Close waits for
// them all.
//
// A sync.WaitGroup alone cannot do it when goroutines are started from
// outside the owner's own goroutines (a peer's hook, a request handler):
// one started while Close waits is an Add concurrent with Wait, which the
// WaitGroup forbids once its counter is zero, and Close would not wait
// for it. A Group refuses new goroutines once Wait has begun.
package group

import "sync"

// Group is a set of goroutines. The zero value is ready to use.
type Group struct {
	mu     sync.Mutex // guards closed, and orders Go's Add before Wait; held only around them
	closed bool
	wg     sync.WaitGroup
}

// Go runs f in a goroutine of the group and reports true, unless Wait has
// begun: then f does not run and Go reports false.
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Wait refuses new goroutines and waits for the running ones. Their owner
// stops them first (cancels their context, closes what they read).
func (g *Group) Wait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
