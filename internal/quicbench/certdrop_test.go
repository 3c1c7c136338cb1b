//go:build linux

package quicbench

import (
	"runtime"
	"testing"
	"time"
	"weak"
)

// After DropPeerCertificates nothing keeps the peer's parsed certificate,
// also when the application read the connection state before (the Conn
// kept the last state it returned, certificates and all, until the next
// call).
func TestDropPeerCertificatesFreesThem(t *testing.T) {
	_, cli := newPair(t)
	certs := cli.conn.ConnectionState().TLS.PeerCertificates
	if len(certs) != 1 {
		t.Fatalf("%d peer certificates, want the server's", len(certs))
	}
	w := weak.Make(certs[0]) // certs is dead from here on
	cli.conn.DropPeerCertificates()
	// The client releases its TLS state at HANDSHAKE_DONE, which may
	// arrive after the dial returned; no ConnectionState call meanwhile.
	for end := time.Now().Add(10 * time.Second); w.Value() != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the peer's certificate is still reachable 10 s after DropPeerCertificates")
		}
		runtime.GC()
	}
	if cs := cli.conn.ConnectionState(); cs.TLS.PeerCertificates != nil || !cs.TLS.HandshakeComplete {
		t.Fatal("the connection state after the drop is wrong")
	}
}
