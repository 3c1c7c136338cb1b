// Command xfer moves a stream of pseudo-random bytes over TCP and prints
// its SHA-256 on both ends, so test scripts can check that a transfer
// through the overlay arrived intact. Test tooling only.
//
//	xfer recv -listen [ADDR]:PORT [-timeout 60s]   prints "<bytes> <sha256>" of what arrived
//	xfer send -to [ADDR]:PORT -bytes N [-seed S]  prints "<bytes> <sha256>" of what was sent
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"

	"github.com/korium/korium-tun/internal/tool"
)

func main() {
	sub, fs := tool.Args("xfer", "send", "recv")
	listen := fs.String("listen", "", "address to accept one connection on")
	to := fs.String("to", "", "address to send to")
	n := fs.Int64("bytes", 64<<20, "bytes to send")
	seed := fs.Uint64("seed", 1, "PRNG seed")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after")
	fs.Parse(os.Args[2:])
	deadline := time.Now().Add(*timeout)
	var err error
	switch sub {
	case "recv":
		err = recv(*listen, deadline)
	case "send":
		err = send(*to, *n, *seed, deadline)
	}
	if err != nil {
		tool.Fail("xfer", err)
	}
}

// recv accepts one connection and prints "<bytes> <sha256>" of what arrived.
func recv(listen string, deadline time.Time) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	ln.(*net.TCPListener).SetDeadline(deadline)
	fmt.Fprintln(os.Stderr, "listening")
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	c.SetDeadline(deadline)
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil {
		return err
	}
	fmt.Printf("%d %s\n", got, hex.EncodeToString(h.Sum(nil)))
	return nil
}

// send dials to (retrying until the deadline), sends n pseudo-random bytes
// and prints "<bytes> <sha256>" of what was sent.
func send(to string, n int64, seed uint64, deadline time.Time) error {
	var c net.Conn
	var err error
	for {
		c, err = net.DialTimeout("tcp", to, 5*time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	c.SetDeadline(deadline)
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{byte(seed)})
	if _, err := io.CopyN(io.MultiWriter(c, h), r, n); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	fmt.Printf("%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	return nil
}
