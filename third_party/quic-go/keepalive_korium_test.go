//go:build linux

package quic

// korium-tun: keep-alives on a grid, PINGs acknowledged at once (see
// keepAliveOnGrid and handleUnpackedShortHeaderPacket).

import (
	"context"
	"testing"
	"time"

	"github.com/korium/korium-tun/third_party/quic-go/internal/ackhandler"
	"github.com/korium/korium-tun/third_party/quic-go/internal/monotime"
)

func TestKeepAliveOnGrid(t *testing.T) {
	for _, c := range []struct {
		interval, step time.Duration
	}{
		{15 * time.Second, time.Second},
		{5 * time.Second, 625 * time.Millisecond},
		{100 * time.Millisecond, 12500 * time.Microsecond},
	} {
		for _, at := range []monotime.Time{1, monotime.Time(time.Hour), monotime.Time(time.Hour + 1), monotime.Time(time.Hour + 999*time.Millisecond + 7)} {
			got := keepAliveOnGrid(at, c.interval)
			if got < at || got.Sub(at) >= c.step || int64(got)%int64(c.step) != 0 {
				t.Errorf("interval %v: %d rounds to %d, want the next multiple of %v", c.interval, at, got, c.step)
			}
		}
	}
	if got := keepAliveOnGrid(12345, 0); got != 12345 {
		t.Errorf("no interval: %d, want it unchanged", got)
	}
}

// idlePair is a client and a server connection on loopback (server's
// config srv, client's cli),
// past the handshake's last 1-RTT frames (HANDSHAKE_DONE, NEW_TOKEN,
// NEW_CONNECTION_ID: acknowledged after max_ack_delay as before), so
// that what follows on them is keep-alives alone.
func idlePair(t *testing.T, ctx context.Context, srvConf, cliConf *Config) (cli, srv *Conn) {
	t.Helper()
	srvTLS, cliTLS := koriumTestTLS(t)
	ln, err := ListenAddr("127.0.0.1:0", srvTLS, srvConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cli, err = DialAddr(ctx, ln.Addr().String(), cliTLS, cliConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.CloseWithError(0, "") })
	srv, err = ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.CloseWithError(0, "") })
	time.Sleep(300 * time.Millisecond)
	return cli, srv
}

// Two idle connections with 100 ms keep-alives on loopback: the client's
// PINGs come back ACKed in well under max_ack_delay (25 ms), which a
// delayed ACK can never do. Without the immediate ACK every RTT sample of
// a keep-alive is at least 25 ms. (The server sends no PING of its own
// while the client's arrive: TestServerKeepAliveDefers.)
func TestKeepAlivePingAckedAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conf := &Config{MaxIdleTimeout: 5 * time.Second, KeepAlivePeriod: 100 * time.Millisecond}
	cli, _ := idlePair(t, ctx, conf, conf)
	best := time.Hour
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if best = min(best, cli.ConnectionStats().LatestRTT); best < ackhandler.MaxAckDelay/2 {
			return
		}
	}
	t.Fatalf("smallest RTT sample of a keep-alive: %v; want one under %v (ACKed at once, not after max_ack_delay)",
		best, ackhandler.MaxAckDelay/2)
}

// With the same keep-alive period at both ends, the client keeps an idle
// connection alive and the server only answers: its own keep-alive
// waits a quarter longer, and each client PING that arrives pushes it
// back. Before, both ends sent a PING every period (four packets per
// period instead of two, and a wakeup more on each end). The server
// still sends its own when the client's stop (the client's side is the
// one a NAT is likelier to be in front of, but a silent client must not
// leave the server's path unproven).
func TestServerKeepAliveDefers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conf := &Config{MaxIdleTimeout: 5 * time.Second, KeepAlivePeriod: 100 * time.Millisecond}
	cli, srv := idlePair(t, ctx, conf, conf)
	c0, s0 := cli.keepAlivesSent.Load(), srv.keepAlivesSent.Load()
	time.Sleep(2 * time.Second)
	c, s := cli.keepAlivesSent.Load()-c0, srv.keepAlivesSent.Load()-s0
	t.Logf("keep-alives in 2 s: client %d, server %d", c, s)
	if c < 10 {
		t.Fatalf("client sent %d keep-alives in 2 s at a 100 ms period; want at least 10", c)
	}
	if s > c/5 {
		t.Fatalf("server sent %d keep-alives in 2 s while the client sent %d; want it to leave them to the client (at most %d)", s, c, c/5)
	}
	if got, want := srv.keepAliveInterval, cli.keepAliveInterval*5/4; got != want {
		t.Errorf("server's keep-alive interval %v, want %v (the client's %v and a quarter)", got, want, cli.keepAliveInterval)
	}

	// A client that sends none: the server keeps the connection alive.
	cliConf := *conf
	cliConf.KeepAlivePeriod = 0
	_, srv2 := idlePair(t, ctx, conf, &cliConf)
	s0 = srv2.keepAlivesSent.Load()
	time.Sleep(2 * time.Second)
	if s := srv2.keepAlivesSent.Load() - s0; s < 8 {
		t.Fatalf("server sent %d keep-alives in 2 s (period 125 ms) to a client that sends none; want at least 8", s)
	}
}
