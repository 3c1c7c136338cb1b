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

// Two idle connections with 100 ms keep-alives on loopback: the PINGs'
// ACKs come back in well under max_ack_delay (25 ms), which a delayed
// ACK can never do. Without the immediate ACK every RTT sample of a
// keep-alive is at least 25 ms.
func TestKeepAlivePingAckedAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srvTLS, cliTLS := koriumTestTLS(t)
	conf := &Config{MaxIdleTimeout: 5 * time.Second, KeepAlivePeriod: 100 * time.Millisecond}
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
	// The handshake's last 1-RTT frames (HANDSHAKE_DONE, NEW_TOKEN,
	// NEW_CONNECTION_ID) are acknowledged after max_ack_delay as before;
	// the keep-alives that follow are PINGs alone.
	time.Sleep(300 * time.Millisecond)
	best := map[string]time.Duration{"client": time.Hour, "server": time.Hour}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for name, c := range map[string]*Conn{"client": cli, "server": srv} {
			best[name] = min(best[name], c.ConnectionStats().LatestRTT)
		}
		if best["client"] < ackhandler.MaxAckDelay/2 && best["server"] < ackhandler.MaxAckDelay/2 {
			return
		}
	}
	t.Fatalf("smallest RTT sample of a keep-alive: client %v, server %v; want one under %v (ACKed at once, not after max_ack_delay)",
		best["client"], best["server"], ackhandler.MaxAckDelay/2)
}
