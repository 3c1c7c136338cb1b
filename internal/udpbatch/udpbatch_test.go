package udpbatch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

func listen(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatalf("%s socket on %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadBuffer(1 << 20)
	return c
}

func messages(n, size int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, size)}
		ms[i].OOB = make([]byte, 128)
	}
	return ms
}

type datagram struct {
	from    string
	payload string
}

// readAll reads n datagrams with r, failing after a deadline.
func readAll(t *testing.T, c *net.UDPConn, r Reader, n int) ([]datagram, []net.Addr) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var got []datagram
	var addrs []net.Addr
	ms := messages(3, 1500) // fewer than sent: several batches
	for len(got) < n {
		k, err := r.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), n, err)
		}
		for _, m := range ms[:k] {
			got = append(got, datagram{m.Addr.String(), string(m.Buffers[0][:m.N])})
			addrs = append(addrs, m.Addr)
		}
	}
	return got, addrs
}

// TestReadBatchMatchesXNet reads the same datagrams from several sources
// with our reader and with x/net's and expects the same payloads and the
// same source addresses; a source's address is one shared value.
func TestReadBatchMatchesXNet(t *testing.T) {
	for _, tc := range []struct{ name, network, listen, send, sendNet string }{
		{"ipv4", "udp4", "127.0.0.1:0", "127.0.0.1:0", "udp4"},
		{"ipv6", "udp6", "[::1]:0", "[::1]:0", "udp6"},
		{"ipv4 on dual-stack", "udp", "[::]:0", "127.0.0.1:0", "udp4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := listen(t, tc.network, tc.listen)
			dst := rc.LocalAddr().(*net.UDPAddr).AddrPort()
			if tc.network == "udp" {
				dst = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dst.Port())
			}
			senders := []*net.UDPConn{listen(t, tc.sendNet, tc.send), listen(t, tc.sendNet, tc.send)}
			const each = 7
			sendAll := func(round string) {
				for i := range each {
					for j, s := range senders {
						if _, err := s.WriteToUDPAddrPort(fmt.Appendf(nil, "%s %d %d", round, j, i), dst); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			ours, err := New(rc)
			if err != nil {
				t.Fatal(err)
			}
			sendAll("ours")
			got, addrs := readAll(t, rc, ours, 2*each)
			sendAll("xnet")
			want, _ := readAll(t, rc, ipv4.NewPacketConn(rc), 2*each)
			for i := range want {
				w := datagram{want[i].from, "ours" + want[i].payload[4:]}
				if got[i] != w {
					t.Errorf("datagram %d: got %+v, x/net read %+v", i, got[i], want[i])
				}
			}
			shared := map[string]net.Addr{}
			for _, a := range addrs {
				if b, ok := shared[a.String()]; ok && b != a {
					t.Errorf("source %s: a new address value per datagram", a)
				}
				shared[a.String()] = a
			}
			if len(shared) != 2 {
				t.Errorf("got %d sources, want 2", len(shared))
			}
		})
	}
}

// TestReadBatchDeadline: a read deadline ends a blocked read with a
// timeout, as quic-go's Transport expects from x/net's reader.
func TestReadBatchDeadline(t *testing.T) {
	rc := listen(t, "udp4", "127.0.0.1:0")
	r, err := New(rc)
	if err != nil {
		t.Fatal(err)
	}
	rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err = r.ReadBatch(messages(4, 100), 0)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("got %v, want a timeout", err)
	}
}
