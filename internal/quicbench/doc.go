// Package quicbench measures the QUIC datagram path of our quic-go fork
// (third_party/quic-go): two connections over real loopback UDP, datagrams
// the size of a full tunnel packet, allocations and time per datagram on
// the sending and the receiving side separately. It holds only tests and
// benchmarks; nothing imports it.
//
// The one-way benchmarks run the far end in a child process (the test
// binary started again), so the parent's -benchmem figures are those of one
// side alone and the child reports the other side's as metrics:
//
//	go test ./internal/quicbench -run '^$' -bench . -benchmem
package quicbench
