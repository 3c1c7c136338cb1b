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
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: xfer send|recv ...")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	listen := fs.String("listen", "", "address to accept one connection on")
	to := fs.String("to", "", "address to send to")
	n := fs.Int64("bytes", 64<<20, "bytes to send")
	seed := fs.Uint64("seed", 1, "PRNG seed")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after")
	fs.Parse(os.Args[2:])
	deadline := time.Now().Add(*timeout)
	h := sha256.New()
	switch os.Args[1] {
	case "recv":
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fail(err.Error())
		}
		ln.(*net.TCPListener).SetDeadline(deadline)
		fmt.Fprintln(os.Stderr, "listening")
		c, err := ln.Accept()
		if err != nil {
			fail(err.Error())
		}
		c.SetDeadline(deadline)
		got, err := io.Copy(h, c)
		if err != nil {
			fail(err.Error())
		}
		fmt.Printf("%d %s\n", got, hex.EncodeToString(h.Sum(nil)))
	case "send":
		var c net.Conn
		var err error
		for {
			c, err = net.DialTimeout("tcp", *to, 5*time.Second)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			fail(err.Error())
		}
		c.SetDeadline(deadline)
		r := rand.NewChaCha8([32]byte{byte(*seed)})
		w := io.MultiWriter(c, h)
		if _, err := io.CopyN(w, r, *n); err != nil {
			fail(err.Error())
		}
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
		fmt.Printf("%d %s\n", *n, hex.EncodeToString(h.Sum(nil)))
	default:
		fail("usage: xfer send|recv ...")
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "xfer:", msg)
	os.Exit(1)
}
