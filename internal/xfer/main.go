// Command xfer moves a stream of pseudo-random bytes over TCP and prints
// its SHA-256 on both ends, so test scripts can check that a transfer
// through the overlay arrived intact. Test tooling only.
//
//	xfer recv -listen [ADDR]:PORT [-timeout 60s]   prints "<bytes> <sha256>" of what arrived
//	xfer send -to [ADDR]:PORT -bytes N [-seed S]  prints "<bytes> <sha256>" of what was sent
//	xfer pace -to [ADDR]:PORT [-pps 2000] [-size 1000] [-timeout D]
//	    sends UDP datagrams at a fixed rate whether or not anyone answers,
//	    until -timeout or SIGINT/SIGTERM, and prints "sent N"
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/korium/korium-tun/internal/tool"
)

func main() {
	sub, fs := tool.Args("xfer", "send", "recv", "pace")
	listen := fs.String("listen", "", "address to accept one connection on")
	to := fs.String("to", "", "address to send to")
	n := fs.Int64("bytes", 64<<20, "bytes to send")
	seed := fs.Uint64("seed", 1, "PRNG seed")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after")
	pps := fs.Int("pps", 2000, "datagrams a second (pace)")
	size := fs.Int("size", 1000, "bytes per datagram (pace)")
	fs.Parse(os.Args[2:])
	deadline := time.Now().Add(*timeout)
	var err error
	switch sub {
	case "recv":
		err = recv(*listen, deadline)
	case "send":
		err = send(*to, *n, *seed, deadline)
	case "pace":
		err = pace(*to, *pps, *size, deadline)
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

// pace sends size-byte UDP datagrams to `to` at pps a second (in bursts
// every millisecond, so the rate holds without a timer per datagram) until
// the deadline or a signal, ignoring send errors, and prints "sent N".
func pace(to string, pps, size int, deadline time.Time) error {
	c, err := net.Dial("udp", to)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	buf := make([]byte, size)
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	start, sent := time.Now(), 0
	for time.Now().Before(deadline) {
		select {
		case <-stop:
			fmt.Printf("sent %d\n", sent)
			return nil
		case now := <-t.C:
			for due := int(now.Sub(start).Seconds() * float64(pps)); sent < due; sent++ {
				c.Write(buf)
			}
		}
	}
	fmt.Printf("sent %d\n", sent)
	return nil
}
