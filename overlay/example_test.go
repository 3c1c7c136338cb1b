package overlay_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/netip"
	"time"

	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
)

// Two nodes in one process, no root needed: each has an in-process network
// stack (netstack) and a UDP socket on loopback. b knows a's contact; TCP
// runs between their SmartAddrs, and a request goes from b to a.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Every node of a network must use the same PoWBits: a peer whose key
	// has less proof of work is refused during the handshake. 8 bits keep
	// this example fast; the default is 24.
	const powBits = 8
	start := func(bootstrap ...overlay.Contact) *overlay.Node {
		kp, err := pki.GenerateKeypair(ctx, powBits)
		if err != nil {
			log.Fatal(err)
		}
		n, err := overlay.New(overlay.Config{
			Keypair:   kp,
			PoWBits:   powBits,
			Listen:    "127.0.0.1:0",
			Bootstrap: bootstrap, // peers to keep connected
		})
		if err != nil {
			log.Fatal(err)
		}
		return n
	}
	a := start()
	defer a.Close()
	peer := a.Contact(netip.MustParseAddr("127.0.0.1")) // IDENTITY@127.0.0.1:PORT
	b := start(peer)
	defer b.Close()

	// a serves TCP echo on port 80 of its SmartAddr.
	ln, err := a.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()

	if err := b.Connect(ctx, peer); err != nil { // wait for the bootstrap connection
		log.Fatal(err)
	}
	c, err := b.DialContext(ctx, "tcp", netip.AddrPortFrom(a.Addr(), 80).String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		log.Fatal(err)
	}
	fmt.Println("tcp:", string(buf))

	// Request/response with a connected peer (up to 1 MiB each way).
	a.SetRequestHandler(func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		return append([]byte("echo "), req...), nil
	})
	resp, err := b.Send(ctx, peer.Identity, []byte("hi"))
	if err != nil {
		log.Fatal(err) // errors.Is(err, overlay.ErrUnreachable / ErrTimeout / ErrRefused / ErrTooLarge / ErrHandler)
	}
	fmt.Println("request:", string(resp))
	// Output:
	// tcp: hello
	// request: echo hi
}
