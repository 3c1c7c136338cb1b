package quic

// korium-tun: tests of ours for what a connection drops with the Initial
// and Handshake encryption levels (upstream's tests are not part of our
// copy).

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
	"github.com/korium/korium-tun/third_party/quic-go/internal/wire"
)

// TestRetransmissionQueueDrop: frames queued for retransmission at a
// dropped level are released, and frames declared lost there later are
// not queued again.
func TestRetransmissionQueueDrop(t *testing.T) {
	q := newRetransmissionQueue()
	for _, el := range []protocol.EncryptionLevel{protocol.EncryptionInitial, protocol.EncryptionHandshake} {
		q.AckHandler(el).OnLost(&wire.CryptoFrame{Data: make([]byte, 1000)})
		q.AckHandler(el).OnLost(&wire.PingFrame{})
		if !q.HasData(el) {
			t.Fatalf("%s: nothing queued", el)
		}
		q.DropPackets(el)
		if q.HasData(el) || q.GetFrame(el, protocol.MaxByteCount, protocol.Version1) != nil {
			t.Fatalf("%s: frames left after the drop", el)
		}
		q.AckHandler(el).OnLost(&wire.CryptoFrame{Data: []byte{1}})
		if q.HasData(el) {
			t.Fatalf("%s: a frame lost after the drop was queued", el)
		}
	}
}

// TestRetransmissionQueueReleasesTaken: a frame taken for retransmission
// is no longer referenced by the queue's array.
func TestRetransmissionQueueReleasesTaken(t *testing.T) {
	q := newRetransmissionQueue()
	h := q.AckHandler(protocol.Encryption1RTT)
	h.OnLost(&wire.CryptoFrame{Data: []byte{1}})
	h.OnLost(&wire.MaxDataFrame{MaximumData: 1})
	h.OnLost(&wire.MaxDataFrame{MaximumData: 2})
	crypto, other := q.appData.crypto[:1], q.appData.other[:2]
	for q.GetFrame(protocol.Encryption1RTT, protocol.MaxByteCount, protocol.Version1) != nil {
	}
	if crypto[0] != nil || other[0] != nil || other[1] != nil {
		t.Fatal("the queue's array still refers to frames it handed out")
	}
}

// TestHandshakeLevelsDropped: after a real handshake over loopback both
// ends have dropped the Initial and Handshake retransmission queues and
// crypto streams.
func TestHandshakeLevelsDropped(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	srvTLS := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"k"}}
	cliTLS := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"k"}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ln, err := ListenAddr("127.0.0.1:0", srvTLS, &Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := DialAddr(ctx, ln.Addr().String(), cliTLS, &Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A stream round trip: the client has seen HANDSHAKE_DONE by the time
	// the server's answer arrives, and both ends confirmed the handshake.
	s, err := cli.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	ss, err := srv.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := ss.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Write(b[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	<-cli.HandshakeComplete()
	for name, c := range map[string]*Conn{"client": cli, "server": srv} {
		c.CloseWithError(0, "") // returns once the run loop is done: its state may be read
		if c.retransmissionQueue.initial != nil || c.retransmissionQueue.handshake != nil {
			t.Errorf("%s: the Initial or Handshake retransmission queue is still held", name)
		}
		if c.initialStream.queue.queue != nil || c.handshakeStream.queue.queue != nil {
			t.Errorf("%s: an Initial or Handshake crypto stream still holds its reassembly state", name)
		}
	}
}
