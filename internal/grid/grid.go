// Package grid rounds times up to a grid, so that timers of many peers due
// within one step fire together (one wakeup instead of one each): smartsock's
// idle peers' due times, nat's dial-back copies.
package grid

import "time"

// Up rounds t up to a multiple of step (Truncate's multiples of the zero
// time, so every caller with the same step shares the grid). A t on the
// grid is returned as it is, without its monotonic reading.
func Up(t time.Time, step time.Duration) time.Time {
	if u := t.Truncate(step); u.Before(t) {
		return u.Add(step)
	}
	return t.Round(0)
}
