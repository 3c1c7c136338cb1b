package gossipsub_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/pki"
)

// quicSender stands for the node's transport: Send writes one RPC on a
// stream of the pooled QUIC connection to the peer (protocol "gossipsub").
type quicSender struct{}

func (quicSender) Send(ctx context.Context, to pki.Identity, rpc []byte) error { return nil }

// Example shows what the node integration calls.
func Example() {
	key, _ := pki.NewKeypair(make([]byte, 32), 0)
	r, err := gossipsub.New(gossipsub.Config{}, key, quicSender{}, nil)
	if err != nil {
		panic(err)
	}
	defer r.Close()

	// On every authenticated connection up or down (the DHT tells which
	// peers to connect to):
	peer := pki.Identity{1}
	r.AddPeer(peer, netip.MustParseAddr("198.18.0.2"), true)
	// For every RPC read from a gossipsub stream of that peer:
	r.HandleRPC(peer, []byte{1})
	// ... and r.RemovePeer(peer) when the connection closes.

	sub, _ := r.Subscribe("lobby")
	_ = r.Publish("lobby", []byte("hello"))
	go func() {
		for m := range sub.Messages() {
			fmt.Printf("%s: %s\n", m.From.Short(), m.Data)
		}
	}()
	go func() {
		for s := range r.Signals() { // relay signals for SmartSock
			_ = s
		}
	}()
	_ = r.TopicPeers("lobby") // for /peers
	_ = r.SendSignal(pki.Identity{2}, []byte("hole punch at t"))
}
