package nat

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/korium/korium-tun/internal/grid"
	"github.com/korium/korium-tun/smartsock"
)

// dialBackCopies is how many times a dial-back is sent, dialBackGap apart
// (a lost packet would read as "not reachable").
const (
	dialBackCopies = 3
	dialBackGap    = 100 * time.Millisecond
)

// dialBacker sends the dial-backs configure_nat's helpers owe: each nonce
// dialBackCopies times, from a socket that is not the node's QUIC one. The
// asker never sent to that socket, so its packets reach the asker only
// through a NAT that lets unsolicited packets in, which is what the
// dial-back tests; one socket per address family serves every dial-back
// (a socket of its own for each cost a socket, a goroutine and three
// timers: at 1,000 peers a bootstrap node's configure_nat rounds were most
// of its idle CPU). The first copy leaves from the handler at once; the
// others leave on a 100 ms grid, so the dial-backs of a round share one
// wakeup of the sender. At most MaxDialBacks wait.
type dialBacker struct {
	mu      sync.Mutex // guards the fields below
	jobs    []dialBackJob
	sock4   *net.UDPConn
	sock6   *net.UDPConn
	closed  bool
	kick    chan struct{}
	scratch []dialBackJob // the sender's, outside mu
}

type dialBackJob struct {
	sock  *net.UDPConn
	addr  netip.AddrPort
	nonce uint64
	left  int
	at    time.Time
}

func newDialBacker() *dialBacker {
	return &dialBacker{kick: make(chan struct{}, 1)}
}

// pending is how many dial-backs have copies still to send.
func (d *dialBacker) pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.jobs)
}

// start sends nonce to addr and schedules its other copies. It reports
// false when MaxDialBacks wait already, or no socket can be had.
func (d *dialBacker) start(addr netip.AddrPort, nonce uint64) bool {
	sock := d.socket(addr.Addr().Is6()) // opened once; nil when closed
	if sock == nil {
		return false
	}
	d.mu.Lock()
	if d.closed || len(d.jobs) >= MaxDialBacks {
		d.mu.Unlock()
		return false
	}
	d.jobs = append(d.jobs, dialBackJob{sock: sock, addr: addr, nonce: nonce, left: dialBackCopies - 1, at: grid.Up(time.Now().Add(dialBackGap), dialBackGap)})
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
	var pkt [16]byte
	sock.WriteToUDPAddrPort(smartsock.AppendDialBack(pkt[:0], nonce), addr) // the first copy, at once
	return true
}

// socket returns the family's dial-back socket, opening it once.
func (d *dialBacker) socket(v6 bool) *net.UDPConn {
	d.mu.Lock()
	s := &d.sock4
	network := "udp4"
	if v6 {
		s, network = &d.sock6, "udp6"
	}
	if *s != nil || d.closed {
		c := *s
		d.mu.Unlock()
		return c
	}
	d.mu.Unlock()
	c, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil
	}
	// It is never read: what arrives waits in the smallest buffer the
	// kernel allows, then is dropped.
	c.SetReadBuffer(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	if *s != nil || d.closed {
		c.Close()
		return *s
	}
	*s = c
	return c
}

// run sends the copies due until ctx ends, then closes the sockets.
func (d *dialBacker) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer func() {
		timer.Stop()
		d.mu.Lock()
		d.closed = true
		d.jobs = nil
		for _, s := range []*net.UDPConn{d.sock4, d.sock6} {
			if s != nil {
				s.Close()
			}
		}
		d.mu.Unlock()
	}()
	for {
		now := time.Now()
		var next time.Time
		d.mu.Lock()
		due, keep := d.scratch[:0], d.jobs[:0]
		for _, j := range d.jobs {
			if !now.Before(j.at) {
				due = append(due, j)
				j.left--
				j.at = grid.Up(now.Add(dialBackGap), dialBackGap)
			}
			if j.left > 0 {
				keep = append(keep, j)
				if next.IsZero() || j.at.Before(next) {
					next = j.at
				}
			}
		}
		clear(d.jobs[len(keep):])
		d.jobs = keep
		d.mu.Unlock()
		var pkt [16]byte
		for _, j := range due {
			j.sock.WriteToUDPAddrPort(smartsock.AppendDialBack(pkt[:0], j.nonce), j.addr)
		}
		clear(due)
		d.scratch = due
		var fire <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-fire:
		case <-d.kick:
		}
	}
}
