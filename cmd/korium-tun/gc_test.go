package main

import (
	"runtime/debug"
	"testing"
)

// up's collector target: GOGC=25 when the environment sets neither GOGC
// nor GOMEMLIMIT, untouched when it sets either.
func TestGCDefaults(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for _, tc := range []struct {
		env  map[string]string
		want uint64
	}{
		{nil, 25},
		{map[string]string{"GOGC": "200"}, 100},
		{map[string]string{"GOGC": "off"}, 100},
		{map[string]string{"GOMEMLIMIT": "80MiB"}, 100},
		{map[string]string{"GOGC": "", "GOMEMLIMIT": ""}, 25}, // set but empty: as unset
	} {
		debug.SetGCPercent(100) // what the runtime would have from the environment
		setting := applyGCDefaults(func(k string) string { return tc.env[k] })
		if got, _ := gcSettings(); got != tc.want {
			t.Errorf("environment %v: GC percent %d, want %d (%s)", tc.env, got, tc.want, setting)
		}
	}
}
