package overlay

import (
	"testing"
	"time"

	"github.com/korium/korium-tun/smartsock"
)

// The zero Config's QUIC keep-alive and idle timeout: keep-alives at the
// period set (quic-go sends them at most every half of the idle timeout),
// often enough that smartsock counts an idle peer's path as proven by them
// and does not probe it (with room for a round trip and the peer's ACK
// delay), and a NAT mapping of 30 s survives one lost keep-alive.
func TestKeepAliveDefaults(t *testing.T) {
	c, err := (&Config{}).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.KeepAlive != 15*time.Second || c.IdleTimeout != 30*time.Second {
		t.Errorf("defaults: keep-alive %v, idle timeout %v; want 15 s and 30 s", c.KeepAlive, c.IdleTimeout)
	}
	if c.KeepAlive > c.IdleTimeout/2 {
		t.Errorf("keep-alive %v above half the idle timeout %v: quic-go would send them every %v", c.KeepAlive, c.IdleTimeout, c.IdleTimeout/2)
	}
	if c.KeepAlive+time.Second > smartsock.QUICProof {
		t.Errorf("keep-alive %v leaves less than a second before smartsock.QUICProof %v: idle peers would be probed", c.KeepAlive, smartsock.QUICProof)
	}
	if c.KeepAlive > 15*time.Second {
		t.Errorf("keep-alive %v: a NAT that drops idle UDP mappings after 30 s would drop one after a single lost PING", c.KeepAlive)
	}
	// Set ones stay.
	c, err = (&Config{KeepAlive: time.Second, IdleTimeout: 3 * time.Second}).withDefaults()
	if err != nil || c.KeepAlive != time.Second || c.IdleTimeout != 3*time.Second {
		t.Errorf("set values: %v %v %v", c.KeepAlive, c.IdleTimeout, err)
	}
}
