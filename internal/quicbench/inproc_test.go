//go:build linux

package quicbench

import "testing"

// BenchmarkInProcess sends b.N datagrams one way between two connections in
// this process: one profile (-memprofile, -cpuprofile, callgrind) holds
// both sides. allocs/op is send and receive together.
func BenchmarkInProcess(b *testing.B) {
	srv, cli := newPair(b)
	r := receive(srv.conn)
	run := func(n int) uint64 {
		got0, t0 := r.got.Load(), now()
		if err := send(cli.conn, 0, n); err != nil {
			b.Fatal(err)
		}
		got := r.waitFor(got0+uint64(n), quiet) - got0
		b.ReportMetric(float64(r.span(t0).Nanoseconds())/float64(max(got, 1)), "ns/dgram")
		return got
	}
	got := measured(b, run)
	if bad := r.bad.Load(); bad > 0 {
		b.Fatalf("%d datagrams arrived damaged", bad)
	}
	b.ReportMetric(100*(1-float64(got)/float64(b.N)), "loss-%")
}
