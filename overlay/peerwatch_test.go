package overlay

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"time"
)

// An idle peer costs the peer set no goroutine (its connection's end is
// watched by a context.AfterFunc) and no parsed certificate, and the end
// is still reported: the other node drops the peer once it closes.
func TestPeerWatchHasNoGoroutine(t *testing.T) {
	a := newTestNode(t, nil, "")
	b := newTestNode(t, nil, "", a.contact())
	waitFor(t, "the connection", 10*time.Second, connected(a, b))
	waitFor(t, "a to hold b", 10*time.Second, func() bool { return a.peer(b.Identity()) != nil })
	// The certificates are dropped once the handshake's TLS state is
	// released (the server after its ticket, the client at HANDSHAKE_DONE).
	for _, x := range [][2]*testNode{{a, b}, {b, a}} {
		waitFor(t, "the peer's certificate to be dropped", 10*time.Second, func() bool {
			p := x[0].peer(x[1].Identity())
			return p != nil && len(p.Conn.ConnectionState().TLS.PeerCertificates) == 0
		})
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if strings.Contains(string(g), "korium-tun/peers.(*Set).watch") {
			t.Fatalf("a goroutine per peer watches its connection:\n%s", g)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to drop b after b closed", 10*time.Second, func() bool { return a.peer(b.Identity()) == nil })
}
