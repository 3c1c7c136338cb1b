package dht

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestLookupHistogram(t *testing.T) {
	var h histogram
	for _, d := range []time.Duration{time.Millisecond, 5 * time.Millisecond, 7 * time.Millisecond, time.Minute} {
		h.observe(d)
	}
	s := h.snapshot()
	if s.Count != 4 || s.Counts[0] != 2 || s.Counts[1] != 1 || s.Counts[len(LookupBuckets)] != 1 || len(s.Counts) != len(s.Bounds)+1 {
		t.Fatalf("histogram %+v", s)
	}
	if s.Sum < 60.012 || s.Sum > 60.014 {
		t.Fatalf("sum %v", s.Sum)
	}
}

// Node IDs read and write as hex in JSON (`peers --json`), not as 32 numbers.
func TestNodeIDJSON(t *testing.T) {
	var id NodeID
	id[0], id[31] = 0xab, 0x01
	b, err := json.Marshal(Snapshot{Self: id})
	if err != nil || !strings.Contains(string(b), `"self":"ab00`) {
		t.Fatalf("%s %v", b, err)
	}
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil || back.Self != id {
		t.Fatalf("round trip: %v %v", back.Self, err)
	}
	if err := json.Unmarshal([]byte(`{"self":"ab"}`), &back); err == nil {
		t.Fatal("short node ID accepted")
	}
}
