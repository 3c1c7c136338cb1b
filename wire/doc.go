// Package wire holds the formats of the non-QUIC packets korium-tun puts on
// its UDP socket and the pieces every decoder here shares:
//
//   - SMPR path probes (smpr.go): hello, probe request and reply, dial-back;
//   - the CRLY relay frame header (crly.go);
//   - the one address codec (addr.go): family 4 or 6, the address, the port;
//   - the one bounded reader (reader.go), which checks every length and
//     count against a limit and the bytes present before anyone allocates.
//
// It holds formats only: no sockets, no state, no clocks. Every decoder is
// strict (one encoding per value, nothing trailing) and fuzzed. The relay
// control messages (observe, connect, incoming, punch) still live in
// relay/proto.go and are to move here.
//
// wire imports the standard library, pki (identities, signatures) and
// blake3 (the probe MAC) only, so clients, servers and tools can all speak
// these formats without linking one another.
package wire
