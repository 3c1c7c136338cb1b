// Command udpmap shows what a NAT does to UDP, for the NAT lab script
// (scripts/nat-test.sh). Test tooling only.
//
//	udpmap echo -listen IP:PORT [-timeout 60s]
//	    answers every datagram with "seen IP:PORT", the source it arrived from
//	udpmap probe -bind IP:PORT -to IP:PORT [-to IP:PORT ...] [-timeout 3s]
//	    from one socket, asks each echo server in turn and prints
//	    "<server> <source the server saw>"; fails if one does not answer
//	udpmap punch -bind IP:PORT -peer IP:PORT [-timeout 5s]
//	    sends to peer every 50 ms until a datagram from peer arrives, keeps
//	    sending 500 ms more so the other side gets one too, prints
//	    "punched <peer>"; fails at the timeout
package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/korium/korium-tun/internal/tool"
)

type addrList []string

func (l *addrList) String() string     { return strings.Join(*l, ",") }
func (l *addrList) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	sub, fs := tool.Args("udpmap", "echo", "probe", "punch")
	listen := fs.String("listen", "", "echo: address to answer on")
	bind := fs.String("bind", "", "probe, punch: local address")
	peer := fs.String("peer", "", "punch: the other side's public address")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after")
	var to addrList
	fs.Var(&to, "to", "probe: an echo server (repeatable)")
	fs.Parse(os.Args[2:])
	deadline := time.Now().Add(*timeout)
	var err error
	switch sub {
	case "echo":
		err = echo(*listen, deadline)
	case "probe":
		err = probe(*bind, to, deadline)
	case "punch":
		err = punch(*bind, *peer, deadline)
	}
	if err != nil {
		tool.Fail("udpmap", err)
	}
}

func listenUDP(addr string) (*net.UDPConn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
}

func echo(listen string, deadline time.Time) error {
	c, err := listenUDP(listen)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(deadline)
	fmt.Fprintln(os.Stderr, "listening")
	buf := make([]byte, 1500)
	for {
		_, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			return err
		}
		if _, err := c.WriteToUDPAddrPort([]byte("seen "+from.String()), from); err != nil {
			return err
		}
	}
}

func probe(bind string, servers []string, deadline time.Time) error {
	c, err := listenUDP(bind)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for _, s := range servers {
		srv, err := netip.ParseAddrPort(s)
		if err != nil {
			return err
		}
		seen := ""
		for seen == "" {
			if time.Now().After(deadline) {
				return fmt.Errorf("no answer from %s", s)
			}
			if _, err := c.WriteToUDPAddrPort([]byte("probe"), srv); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					break // resend
				}
				if from == srv && strings.HasPrefix(string(buf[:n]), "seen ") {
					seen = strings.TrimPrefix(string(buf[:n]), "seen ")
					break
				}
			}
		}
		fmt.Printf("%s %s\n", s, seen)
	}
	return nil
}

func punch(bind, peerAddr string, deadline time.Time) error {
	c, err := listenUDP(bind)
	if err != nil {
		return err
	}
	defer c.Close()
	peer, err := netip.ParseAddrPort(peerAddr)
	if err != nil {
		return err
	}
	buf := make([]byte, 1500)
	var got time.Time
	for {
		now := time.Now()
		if !got.IsZero() && now.Sub(got) > 500*time.Millisecond {
			fmt.Printf("punched %s\n", peer)
			return nil
		}
		if now.After(deadline) {
			return fmt.Errorf("nothing from %s", peer)
		}
		if _, err := c.WriteToUDPAddrPort([]byte("punch"), peer); err != nil {
			return err
		}
		c.SetReadDeadline(now.Add(50 * time.Millisecond))
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if from == peer && got.IsZero() {
				got = time.Now()
			}
		}
	}
}
