//go:build linux

package quic

// korium-tun: a lone packet is sent from a packet-sized buffer, not a
// GSO-sized one (see sendPacketsWithGSO).

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func koriumTestTLS(t *testing.T) (srv, cli *tls.Config) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"korium"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	srv = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"korium"}}
	cli = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"korium"}, ServerName: "korium"}
	return srv, cli
}

// Small datagrams one at a time, each answered by an ACK: every send is a
// lone small packet, and none of them takes a GSO buffer. The collector is
// off meanwhile, so the pool keeps what the sends put back: a GSO buffer
// that carried a packet has bytes in it, a fresh one none.
func TestLoneSendsTakeNoLargeBuffer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srvTLS, cliTLS := koriumTestTLS(t)
	conf := &Config{EnableDatagrams: true, MaxIdleTimeout: 30 * time.Second, DisablePathMTUDiscovery: true} // 1280-byte packets
	ln, err := ListenAddr("127.0.0.1:0", srvTLS, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := DialAddr(ctx, ln.Addr().String(), cliTLS, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.CloseWithError(0, "")
	srv, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.CloseWithError(0, "")
	if !cli.ConnectionState().GSO {
		t.Fatal("no GSO on loopback: sendPacketsWithGSO is not used")
	}
	exchange := func() {
		if err := cli.SendDatagram([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := srv.ReceiveDatagram(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 { // the handshake's last packets
		exchange()
	}
	time.Sleep(50 * time.Millisecond)
	runtime.GC()
	runtime.GC() // both pool generations emptied
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	for range 20 {
		exchange()
		time.Sleep(2 * time.Millisecond) // the ACK
	}
	if used := usedLargeBuffers(); used > 0 {
		t.Fatalf("%d GSO buffers carried lone small packets", used)
	}
	// Bursts of full packets still go out in GSO batches (a burst the run
	// loop keeps up with goes out packet by packet: up to 20 bursts).
	big := make([]byte, 1220) // a full 1280-byte packet each (padded, change 2)
	for burst := 0; usedLargeBuffers() == 0; burst++ {
		if burst == 20 {
			t.Fatal("20 bursts of full packets used no GSO buffer")
		}
		for range 200 {
			if err := cli.SendDatagram(big); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// usedLargeBuffers takes 64 buffers from the GSO pool and counts those that
// carried packets.
func usedLargeBuffers() int {
	used := 0
	for range 64 {
		b := largeBufferPool.Get().(*packetBuffer)
		for _, x := range b.Data[:cap(b.Data)] {
			if x != 0 {
				used++
				break
			}
		}
	}
	return used
}
