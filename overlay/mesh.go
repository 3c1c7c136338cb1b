package overlay

import (
	"github.com/korium/korium-tun/nat"
	"github.com/korium/korium-tun/peers"
	"github.com/korium/korium-tun/pki"
)

// Mesh-first relaying lives in nat (mesh.go, signal.go); the node gives it
// the gossip mesh to signal through, the DHT routing table as the public
// peers it knows, and the signals addressed to us.

// signalQueue bounds the application's signals waiting in Signals.
const signalQueue = 256

// sendMeshSignal is nat's Config.Signal.
func (n *Node) sendMeshSignal(target pki.Identity, payload []byte) error {
	return n.gossip.SendSignal(target, payload)
}

// spares is nat's Config.Spares: the DHT routing table's contacts, which
// are public nodes (a node behind NAT is a DHT client and never enters it).
func (n *Node) spares() []peers.Contact {
	if n.dht == nil {
		return nil
	}
	var out []peers.Contact
	for _, b := range n.dht.Snapshot().Buckets {
		for _, c := range b.Contacts {
			ct := peers.Contact{Identity: c.Identity}
			if addrs := n.dialable(c.Addrs); len(addrs) > 0 {
				ct.Addr = addrs[0]
			}
			out = append(out, ct)
		}
	}
	return out
}

// signalLoop reads the gossip router's signals until it closes: mesh relay
// signals go to nat, the others to the application's Signals channel (the
// oldest dropped when it is full, counted).
func (n *Node) signalLoop() {
	for s := range n.gossip.Signals() {
		if nat.IsSignal(s.Payload) {
			n.nat.HandleSignal(s.From, s.Payload)
			continue
		}
		select {
		case n.appSignals <- s:
			continue
		default:
		}
		select {
		case <-n.appSignals:
			n.stats.AppSignalsDropped.Add(1)
		default:
		}
		select {
		case n.appSignals <- s:
		default:
			n.stats.AppSignalsDropped.Add(1)
		}
	}
}
