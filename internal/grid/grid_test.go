package grid

import (
	"testing"
	"time"
)

func TestUp(t *testing.T) {
	for _, step := range []time.Duration{100 * time.Millisecond, time.Second} {
		for _, at := range []time.Time{time.Unix(100, 0), time.Unix(100, 1), time.Unix(100, 999_999_999), time.Now()} {
			got := Up(at, step)
			if got.Before(at) || !got.Before(at.Add(step)) || got.UnixNano()%int64(step) != 0 {
				t.Errorf("Up(%v, %v) = %v, want the next multiple of %v", at, step, got, step)
			}
		}
	}
}
