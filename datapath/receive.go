package datapath

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/korium/korium-tun/internal/ip6"
	"github.com/korium/korium-tun/peers"
)

// recvBatch is how many datagrams a receiver takes per call while its
// peer is busy. An idle peer's receiver waits with one buffer, so a
// thousand quiet peers hold a thousand buffers, not a batch each.
const recvBatch = 32

// receive drains p's datagrams straight into device buffers, checks each
// in place and queues the good ones for the device writer. It does nothing
// slow, so quic-go's queue of received datagrams rarely fills. It ends
// with p's connection (or the engine).
func (e *Engine) receive(p *peers.Peer) {
	fp := e.firewallPeer(p)
	var (
		held  [recvBatch]*pbuf
		bufs  [recvBatch][]byte
		sizes [recvBatch]int
		one   [1][]byte // a direct device write (writeDirect)
		last  time.Time // when the last datagrams came
	)
	defer func() {
		for _, b := range held {
			if b != nil {
				e.rxPool.Put(b)
			}
		}
	}()
	k := 1 // buffers offered: one while idle, a batch while busy
	for {
		for i := range k {
			if held[i] == nil {
				held[i] = e.rxPool.Get().(*pbuf)
				bufs[i] = held[i].b[devOffset:]
			}
		}
		n, err := p.Conn.ReceiveDatagrams(e.ctx, bufs[:k], sizes[:k])
		now := time.Now()
		quiet := now.Sub(last) >= idleGap // the peer was quiet: no batch to keep
		last = now
		if err != nil {
			if errors.Is(err, io.ErrShortBuffer) {
				e.Counters.RxMalformed.Add(1) // cannot happen: buffers hold quic-go's largest
				continue
			}
			return
		}
		for i := range n {
			b := held[i]
			b.n = sizes[i]
			if d := b.b[devOffset : devOffset+b.n]; !e.accept(p, d) || !e.filterIn(fp, d) {
				continue // its buffer is reused
			}
			if n == 1 && quiet && e.writeDirect(one[:], b) {
				continue // written: its buffer is reused
			}
			e.toWrite.Add(1)
			select {
			case e.inbound <- b:
				held[i], bufs[i] = nil, nil
			case <-e.ctx.Done():
				return
			}
		}
		if n < k {
			// The queue is drained: wait for the next datagram with one
			// buffer, giving the others back.
			for i := 1; i < k; i++ {
				if held[i] != nil {
					e.rxPool.Put(held[i])
					held[i], bufs[i] = nil, nil
				}
			}
			k = 1
		} else {
			k = recvBatch
		}
	}
}

// accept checks one datagram from p: it must be a whole IPv6 packet within
// our MTU from p's own SmartAddr to ours (a peer can never speak with
// another peer's address), from a peer that carries IP packets. A dropped
// datagram is counted by reason. It allocates nothing.
func (e *Engine) accept(p *peers.Peer, d []byte) bool {
	src, dst, ok := ip6.Addrs(d)
	switch {
	case !ok || len(d) > e.cfg.MTU:
		// Larger than our MTU (a peer can send a datagram a little over
		// it) would exceed the device's MTU.
		e.Counters.RxMalformed.Add(1)
		return false
	case src != p.Addr:
		e.Counters.RxSpoofedSource.Add(1)
		return false
	case dst != e.cfg.Addr:
		e.Counters.RxNotForUs.Add(1)
		return false
	case !p.Routable:
		e.Counters.RxNotRoutable.Add(1)
		return false
	}
	p.Touch()
	p.RxPackets.Add(1)
	p.RxBytes.Add(uint64(len(d)))
	return true
}

// writeDirect writes b, a receiver's lone datagram after the peer was
// quiet for idleGap, to the device from the receiver itself when the
// device writer has nothing to write: the packet skips the hand-off to the
// writer goroutine (a wake-up on an idle machine, much of an idle round
// trip). A busy peer's datagrams go to the writer, which coalesces them.
// Order is kept: a receiver writes straight only when none of its earlier
// packets wait for the writer (e.toWrite counts every packet handed to it
// and not yet written). tun.Device writes may run concurrently:
// wireguard-go writes from one goroutine per peer. one is the receiver's
// own slice header.
func (e *Engine) writeDirect(one [][]byte, b *pbuf) bool {
	if e.toWrite.Load() != 0 {
		return false
	}
	one[0] = b.b[:devOffset+b.n]
	_, err := e.dev.Write(one, devOffset)
	one[0] = nil
	e.Counters.RxDirect.Add(1)
	if err != nil && e.ctx.Err() == nil {
		// The read loop sees a device that is gone, and stops the node.
		e.Counters.DevWriteErrors.Add(1)
	}
	return true
}

// writeLoop writes queued packets to the device in batches. With
// CoalesceCopy it copies each into a 64 KiB buffer of its own, so that the
// kernel TUN can coalesce consecutive TCP segments into one (GRO) in place;
// otherwise it hands the device the receive buffers themselves.
func (e *Engine) writeLoop() {
	max := e.dev.BatchSize()
	var gro [][]byte
	if e.cfg.CoalesceCopy {
		gro = make([][]byte, max)
		for i := range gro {
			gro[i] = make([]byte, devOffset+65535)
		}
	}
	bufs := make([][]byte, 0, max)
	taken := make([]*pbuf, 0, max)
	for {
		var b *pbuf
		select {
		case b = <-e.inbound:
		case <-e.ctx.Done():
			return
		}
	gather:
		for {
			if gro != nil {
				g := gro[len(bufs)]
				bufs = append(bufs, g[:devOffset+copy(g[devOffset:], b.b[devOffset:devOffset+b.n])])
				e.rxPool.Put(b)
			} else {
				bufs = append(bufs, b.b[:devOffset+b.n])
				taken = append(taken, b)
			}
			if len(bufs) == max {
				break
			}
			select {
			case b = <-e.inbound:
			default:
				break gather
			}
		}
		_, err := e.dev.Write(bufs, devOffset)
		e.toWrite.Add(-int64(len(bufs)))
		for i, b := range taken {
			e.rxPool.Put(b)
			taken[i] = nil
		}
		clear(bufs)
		bufs, taken = bufs[:0], taken[:0]
		if err != nil && e.ctx.Err() == nil {
			e.Counters.DevWriteErrors.Add(1)
			if deviceGone(err) {
				e.fail(fmt.Errorf("device %s is gone (%v): the node stops", e.devName, err))
				return
			}
		}
	}
}
