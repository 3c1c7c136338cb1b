package handshake

// korium-tun: tests of ours for releaseTLS (upstream's tests are not part
// of this copy).

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/korium/korium-tun/third_party/quic-go/internal/protocol"
	"github.com/korium/korium-tun/third_party/quic-go/internal/qerr"
	"github.com/korium/korium-tun/third_party/quic-go/internal/utils"
	"github.com/korium/korium-tun/third_party/quic-go/internal/wire"
)

func koriumTLSConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"korium"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"korium"}, ClientAuth: tls.RequireAnyClientCert}
	client = &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, NextProtos: []string{"korium"}, ServerName: "korium"}
	return server, client
}

// koriumHandshake runs a client and a server cryptoSetup against each
// other in memory until both completed the handshake, as a connection's
// run loop would: CRYPTO data goes to the other side at its level, the
// server produces its session ticket, the client gets HANDSHAKE_DONE.
// It returns the client's session ticket data, if the server sent any.
func koriumHandshake(t *testing.T, srvConf, cliConf *tls.Config) (srv, cli *cryptoSetup, ticket []byte) {
	t.Helper()
	srv, cli = koriumHandshakeOnly(t, srvConf, cliConf)
	return srv, cli, confirm(t, srv, cli)
}

// confirm is what follows the handshake: the server confirms it and makes
// its session ticket, the client gets HANDSHAKE_DONE.
func confirm(t *testing.T, srv, cli *cryptoSetup) []byte {
	srv.SetHandshakeConfirmed()
	ticket, err := srv.GetSessionTicket()
	if err != nil {
		t.Error(err)
	}
	cli.SetHandshakeConfirmed()
	return ticket
}

// koriumHandshakeOnly runs the handshake proper.
func koriumHandshakeOnly(t *testing.T, srvConf, cliConf *tls.Config) (srv, cli *cryptoSetup) {
	t.Helper()
	connID := protocol.ParseConnectionID([]byte{1, 2, 3, 4, 5, 6, 7, 8})
	var token protocol.StatelessResetToken
	cli = NewCryptoSetupClient(connID, &wire.TransportParameters{ActiveConnectionIDLimit: 2}, cliConf, false,
		utils.NewRTTStats(), nil, utils.DefaultLogger, protocol.Version1).(*cryptoSetup)
	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	srv = NewCryptoSetupServer(connID, addr, addr, &wire.TransportParameters{ActiveConnectionIDLimit: 2, StatelessResetToken: &token}, srvConf, false,
		utils.NewRTTStats(), nil, utils.DefaultLogger, protocol.Version1).(*cryptoSetup)
	ctx := context.Background()
	if err := srv.StartHandshake(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cli.StartHandshake(ctx); err != nil {
		t.Fatal(err)
	}
	done := map[*cryptoSetup]bool{}
	// pump delivers from's pending CRYPTO data to to.
	pump := func(from, to *cryptoSetup) {
		for {
			ev := from.NextEvent()
			switch ev.Kind {
			case EventNoEvent:
				return
			case EventWriteInitialData:
				if err := to.HandleMessage(ev.Data, protocol.EncryptionInitial); err != nil {
					t.Fatal(err)
				}
			case EventWriteHandshakeData:
				if err := to.HandleMessage(ev.Data, protocol.EncryptionHandshake); err != nil {
					t.Fatal(err)
				}
			case EventHandshakeComplete:
				done[from] = true
			}
		}
	}
	for i := 0; i < 10 && !(done[srv] && done[cli]); i++ {
		pump(cli, srv)
		pump(srv, cli)
	}
	if !done[srv] || !done[cli] {
		t.Fatal("the handshake did not complete")
	}
	return srv, cli
}

// TestReleaseTLSAfterHandshake: once the handshake is over both sides drop
// their TLS connection, yet ConnectionState still reports the peer's
// certificate and the negotiated protocol; the client ignores the session
// ticket that arrives afterwards (it stores none), and the server refuses
// any TLS message from the client, as crypto/tls would have.
func TestReleaseTLSAfterHandshake(t *testing.T) {
	srvConf, cliConf := koriumTLSConfigs(t)
	srv, cli, ticket := koriumHandshake(t, srvConf, cliConf)
	if len(ticket) == 0 {
		t.Fatal("the server sent no session ticket: nothing to deliver after the release")
	}
	for name, cs := range map[string]*cryptoSetup{"server": srv, "client": cli} {
		if cs.conn != nil || cs.tlsConf != nil {
			t.Errorf("%s: the TLS connection is still held after the handshake", name)
		}
		st := cs.ConnectionState()
		if !st.HandshakeComplete || st.NegotiatedProtocol != "korium" || len(st.PeerCertificates) != 1 {
			t.Errorf("%s: connection state after the release: complete %v, protocol %q, %d peer certificates",
				name, st.HandshakeComplete, st.NegotiatedProtocol, len(st.PeerCertificates))
		}
		if err := cs.Close(); err != nil {
			t.Errorf("%s: Close: %v", name, err)
		}
	}
	// Keys exported from the state after the release (smartsock derives
	// its probe key so) agree at both ends.
	sst, cst := srv.ConnectionState(), cli.ConnectionState()
	ks, err1 := sst.ExportKeyingMaterial("korium test", nil, 32)
	kc, err2 := cst.ExportKeyingMaterial("korium test", nil, 32)
	if err1 != nil || err2 != nil || string(ks) != string(kc) {
		t.Errorf("exported keys after the release: %v, %v, equal %v", err1, err2, string(ks) == string(kc))
	}
	if err := cli.HandleMessage(ticket, protocol.Encryption1RTT); err != nil {
		t.Errorf("client: the session ticket after the release: %v", err)
	}
	err := srv.HandleMessage([]byte{4, 0, 0, 1, 0}, protocol.Encryption1RTT)
	var cerr *qerr.TransportError
	if !errors.As(err, &cerr) || cerr.ErrorCode != qerr.TransportErrorCode(0x100+10) {
		t.Errorf("server: a TLS message from the client after the handshake: %v, want the crypto error unexpected_message", err)
	}
	if err := cli.HandleMessage([]byte{1}, protocol.EncryptionHandshake); err == nil {
		t.Error("client: CRYPTO data at a dropped level was accepted")
	}
}

// TestClientWithSessionCacheKeepsTLS: a client that stores session tickets
// keeps its TLS connection, and the ticket that arrives after the
// handshake reaches its cache.
func TestClientWithSessionCacheKeepsTLS(t *testing.T) {
	srvConf, cliConf := koriumTLSConfigs(t)
	cache := &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	cliConf.ClientSessionCache = cache
	srv, cli, ticket := koriumHandshake(t, srvConf, cliConf)
	if srv.conn != nil {
		t.Error("server: the TLS connection is still held after the handshake")
	}
	if cli.conn == nil {
		t.Fatal("client: a client with a session cache released its TLS connection")
	}
	if err := cli.HandleMessage(ticket, protocol.Encryption1RTT); err != nil {
		t.Fatal(err)
	}
	for ev := cli.NextEvent(); ev.Kind != EventNoEvent; ev = cli.NextEvent() {
	}
	if cache.puts() == 0 {
		t.Error("the session ticket did not reach the client's cache")
	}
}

type countingCache struct {
	tls.ClientSessionCache
	mu sync.Mutex
	n  int
}

func (c *countingCache) Put(key string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	c.ClientSessionCache.Put(key, cs)
}

func (c *countingCache) puts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestConnectionStateDuringRelease reads the connection state from other
// goroutines while the run loop releases the TLS connections (run with
// -race).
func TestConnectionStateDuringRelease(t *testing.T) {
	srvConf, cliConf := koriumTLSConfigs(t)
	for range 5 {
		srv, cli := koriumHandshakeOnly(t, srvConf, cliConf)
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for _, cs := range []*cryptoSetup{srv, cli} {
			wg.Go(func() {
				for {
					if st := cs.ConnectionState(); len(st.PeerCertificates) != 1 {
						t.Errorf("connection state without the peer certificate: %d", len(st.PeerCertificates))
						return
					}
					select {
					case <-stop:
						return
					default:
					}
				}
			})
		}
		confirm(t, srv, cli)
		close(stop)
		wg.Wait()
		if srv.conn != nil || cli.conn != nil {
			t.Fatal("not released")
		}
	}
}

// TestDropPeerCertificates: asked before the release (as a server's
// application may, right after Accept) or after it, the peer's certificates
// are gone from the connection state once the TLS connection is released,
// and the rest of the state is kept.
func TestDropPeerCertificates(t *testing.T) {
	srvConf, cliConf := koriumTLSConfigs(t)
	srv, cli := koriumHandshakeOnly(t, srvConf, cliConf)
	srv.DropPeerCertificates() // before its release
	if len(srv.ConnectionState().PeerCertificates) != 1 {
		t.Fatal("the certificates were dropped before the TLS connection was released")
	}
	confirm(t, srv, cli)
	cli.DropPeerCertificates() // after its release
	for name, cs := range map[string]*cryptoSetup{"server": srv, "client": cli} {
		st := cs.ConnectionState()
		if st.PeerCertificates != nil || st.VerifiedChains != nil {
			t.Errorf("%s: peer certificates kept", name)
		}
		if !st.HandshakeComplete || st.NegotiatedProtocol != "korium" {
			t.Errorf("%s: the rest of the connection state is gone", name)
		}
	}
}
