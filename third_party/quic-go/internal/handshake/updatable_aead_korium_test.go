package handshake

// korium-tun: tests of ours for the next key phase's AEADs made on first
// use (upstream's tests are not part of this copy).

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"testing"

	"github.com/korium/korium-tun/third_party/quic-go/internal/monotime"
	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
	"github.com/korium/korium-tun/third_party/quic-go/internal/utils"
)

// aeadPair is a client's and a server's 1-RTT AEADs with matching keys,
// the handshake confirmed.
func aeadPair(t *testing.T) (cli, srv *updatableAEAD) {
	t.Helper()
	suite := getCipherSuite(tls.TLS_AES_128_GCM_SHA256)
	c2s, s2c := make([]byte, suite.Hash.Size()), make([]byte, suite.Hash.Size())
	rand.Read(c2s)
	rand.Read(s2c)
	rtt := utils.NewRTTStats()
	cli = newUpdatableAEAD(rtt, nil, utils.DefaultLogger, protocol.Version1)
	srv = newUpdatableAEAD(rtt, nil, utils.DefaultLogger, protocol.Version1)
	cli.SetReadKey(suite, s2c)
	cli.SetWriteKey(suite, c2s)
	srv.SetWriteKey(suite, s2c)
	srv.SetReadKey(suite, c2s)
	cli.SetHandshakeConfirmed()
	srv.SetHandshakeConfirmed()
	return cli, srv
}

// TestLazyNextKeys: no next-phase AEAD exists until a key update needs
// it, and key updates started by either side still carry every packet
// through several phases, with packets of both phases around each update.
func TestLazyNextKeys(t *testing.T) {
	cli, srv := aeadPair(t)
	for _, a := range []*updatableAEAD{cli, srv} {
		if a.nextRcvAEAD != nil || a.nextSendAEAD != nil {
			t.Fatal("next key phase AEADs made before a key update")
		}
	}
	ad := []byte("header")
	now := monotime.Now()
	pns := map[*updatableAEAD]protocol.PacketNumber{}
	// send seals one packet from a to b and checks that b opens it.
	send := func(from, to *updatableAEAD) protocol.KeyPhaseBit {
		t.Helper()
		pn := pns[from]
		pns[from]++
		kp := from.KeyPhase()
		msg := fmt.Appendf(nil, "packet %d", pn)
		sealed := from.Seal(nil, msg, pn, ad)
		got, err := to.Open(nil, sealed, now, pn, kp, ad)
		if err != nil {
			t.Fatalf("packet %d, key phase %d: %v", pn, kp, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("packet %d opened as %q", pn, got)
		}
		return kp
	}
	phases := map[protocol.KeyPhaseBit]int{}
	// Enough packets for the first update (FirstKeyUpdateInterval) and a
	// few more with a shortened interval; ACKs let each update complete.
	defer SetKeyUpdateInterval(50)()
	for i := range 600 {
		from, to := cli, srv
		if i%3 == 0 {
			from, to = srv, cli // the server sends too, and updates on its own
		}
		phases[send(from, to)]++
		to.SetLargestAcked(pns[from] - 1)
		from.SetLargestAcked(pns[to] - 1)
	}
	if cli.keyPhase < 3 || srv.keyPhase < 3 {
		t.Fatalf("key phases after 600 packets: client %d, server %d; want several updates", cli.keyPhase, srv.keyPhase)
	}
	if phases[protocol.KeyPhaseZero] == 0 || phases[protocol.KeyPhaseOne] == 0 {
		t.Fatalf("packets per key phase bit: %v", phases)
	}
}
