//go:build linux && (amd64 || arm64)

package smartsock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

// TestGROUnderQUIC: a QUIC stream between two Conns on loopback arrives
// intact while the receiving socket takes the sender's GSO bursts as
// coalesced reads (the kernel keeps them whole for a UDP_GRO socket) and
// the Conn splits them before quic-go sees them.
func TestGROUnderQUIC(t *testing.T) {
	a, b := newEnd(t, true), newEnd(t, true)
	client, server := connect(t, a, b)
	if !client.ConnectionState().GSO {
		t.Fatal("quic-go found no GSO on the sending Conn: nothing to coalesce")
	}
	data := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sent := make(chan error, 1)
	go func() {
		s, err := client.OpenStreamSync(ctx)
		if err == nil {
			_, err = s.Write(data)
			if cerr := s.Close(); err == nil {
				err = cerr
			}
		}
		sent <- err
	}()
	s, err := server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	n, err := io.Copy(h, s)
	if err != nil {
		t.Fatalf("after %d bytes: %v", n, err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(data); n != int64(len(data)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("got %d bytes that differ from the %d sent", n, len(data))
	}
	st := b.sock.Stats()
	t.Logf("receiver: %d coalesced reads, %d segments, %d QUIC packets in, %d writes out; sender: %d writes", st.RxGROReads, st.RxGROSegments, st.RxQUIC, st.TxCalls, a.sock.Stats().TxCalls)
	if st.RxGROReads == 0 || st.RxGROSegments <= st.RxGROReads {
		t.Fatalf("receiver: %d coalesced reads with %d segments, want some", st.RxGROReads, st.RxGROSegments)
	}
	if st.DropGROCmsg != 0 || st.DropGROTrunc != 0 {
		t.Fatalf("receiver dropped reads: %d bad control messages, %d truncated", st.DropGROCmsg, st.DropGROTrunc)
	}
}
