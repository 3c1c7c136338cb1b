// Command reqtool checks the overlay's request/response API between two
// processes (in two network namespaces, over real UDP): one serves, the
// other runs the checks and exits non-zero if one fails. Test tooling only.
//
//	reqtool serve -listen HOST:PORT -contact FILE [-pow N]
//	    runs an in-process node whose handler echoes, sleeps or answers with
//	    N bytes; writes IDENTITY@HOST:PORT to FILE
//	reqtool check -bootstrap IDENTITY@HOST:PORT [-pow N]
//	    echo, a 1 MiB request, requests and responses over 1 MiB, and 100
//	    concurrent slow requests against the 64-stream limit
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/korium/korium-tun/internal/tool"
	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/pki"
)

// Request ops (first byte).
const (
	opEcho  = 'e' // answer the request as is
	opSlow  = 's' // hold 300 ms, then echo: concurrency is counted
	opBig   = 'b' // answer with the uint32 that follows, in bytes
	opStats = 'm' // answer the highest concurrency of opSlow seen
)

func main() {
	sub, fs := tool.Args("reqtool", "serve", "check")
	listen := fs.String("listen", "[::]:0", "UDP address")
	contact := fs.String("contact", "", "serve: file to write IDENTITY@HOST:PORT to")
	boot := fs.String("bootstrap", "", "check: the server's IDENTITY@HOST:PORT")
	pow := fs.Int("pow", 8, "proof-of-work bits")
	fs.Parse(os.Args[2:])
	if err := run(sub, *listen, *contact, *boot, *pow); err != nil {
		tool.Fail("reqtool", err)
	}
}

func run(sub, listen, contact, boot string, pow int) error {
	switch {
	case sub == "serve" && contact == "":
		return errors.New("serve needs -contact FILE")
	case sub == "check" && boot == "":
		return errors.New("check needs -bootstrap IDENTITY@HOST:PORT")
	}
	kp, err := pki.GenerateKeypair(context.Background(), pow)
	if err != nil {
		return err
	}
	powBits := pow
	if powBits == 0 {
		powBits = -1 // overlay.Config: 0 is the default (24), negative is none
	}
	cfg := overlay.Config{Keypair: kp, PoWBits: powBits, Listen: listen}
	var server overlay.Contact
	if boot != "" {
		if server, err = overlay.ParseContact(boot); err != nil {
			return err
		}
		cfg.Bootstrap = []overlay.Contact{server}
	}
	n, err := overlay.New(cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	if sub == "serve" {
		return serve(n, contact, listen)
	}
	if err := check(n, server.Identity); err != nil {
		return err
	}
	fmt.Println("PASS reqtool")
	return nil
}

func serve(n *overlay.Node, contactFile, listen string) error {
	var cur, peak atomic.Int64
	n.SetRequestHandler(func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		if len(req) == 0 {
			return nil, errors.New("empty request")
		}
		switch req[0] {
		case opEcho:
			return req, nil
		case opSlow:
			c := cur.Add(1)
			defer cur.Add(-1)
			for {
				p := peak.Load()
				if c <= p || peak.CompareAndSwap(p, c) {
					break
				}
			}
			select {
			case <-time.After(300 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return req, nil
		case opBig:
			if len(req) != 5 {
				return nil, errors.New("bad size request")
			}
			return make([]byte, binary.BigEndian.Uint32(req[1:])), nil
		case opStats:
			return binary.BigEndian.AppendUint64(nil, uint64(peak.Load())), nil
		}
		return nil, errors.New("unknown op")
	})
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("-listen: %v", err)
	}
	c := n.Contact(ap.Addr())
	if err := os.WriteFile(contactFile+".tmp", []byte(c.String()+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.Rename(contactFile+".tmp", contactFile); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}

func check(n *overlay.Node, server pki.Identity) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	send := func(req []byte) ([]byte, error) {
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return n.Send(c, server, req)
	}
	// The bootstrap connection may take a moment.
	var err error
	for i := 0; i < 100; i++ {
		if _, err = send([]byte{opEcho}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("first request: %v", err)
	}
	// A full 1 MiB request comes back intact.
	big := bytes.Repeat([]byte{0x5a}, overlay.MaxRequestSize)
	big[0] = opEcho
	t0 := time.Now()
	resp, err := send(big)
	if err != nil || !bytes.Equal(resp, big) {
		return fmt.Errorf("1 MiB echo: %d bytes back, %v", len(resp), err)
	}
	fmt.Printf("1 MiB request and response in %v\n", time.Since(t0).Round(time.Millisecond))
	// One byte more is refused as too large, before it is sent.
	if _, err := send(append(big, 0)); !errors.Is(err, overlay.ErrTooLarge) {
		return fmt.Errorf("request of 1 MiB + 1: want ErrTooLarge, got %v", err)
	}
	// A response over 1 MiB is refused by the server.
	req := binary.BigEndian.AppendUint32([]byte{opBig}, overlay.MaxRequestSize+1)
	if _, err := send(req); !errors.Is(err, overlay.ErrTooLarge) {
		return fmt.Errorf("response of 1 MiB + 1: want ErrTooLarge, got %v", err)
	}
	req = binary.BigEndian.AppendUint32([]byte{opBig}, overlay.MaxRequestSize)
	if resp, err := send(req); err != nil || len(resp) != overlay.MaxRequestSize {
		return fmt.Errorf("response of 1 MiB: %d bytes, %v", len(resp), err)
	}
	fmt.Println("size limit: 1 MiB passes both ways, 1 MiB + 1 is refused both ways (ErrTooLarge)")
	// 100 concurrent slow requests: all answered, never more than 64 at once.
	const k = 100
	var wg sync.WaitGroup
	errs := make(chan error, k)
	t0 = time.Now()
	for i := 0; i < k; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := binary.BigEndian.AppendUint32([]byte{opSlow}, uint32(i))
			resp, err := send(msg)
			if err == nil && !bytes.Equal(resp, msg) {
				err = errors.New("wrong answer")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return fmt.Errorf("concurrent requests: %v", err)
	}
	took := time.Since(t0)
	resp, err = send([]byte{opStats})
	if err != nil || len(resp) != 8 {
		return fmt.Errorf("stats: %v", err)
	}
	peak := binary.BigEndian.Uint64(resp)
	fmt.Printf("100 concurrent 300 ms requests: all answered in %v, at most %d handled at once\n", took.Round(time.Millisecond), peak)
	if peak > 64 || peak < 32 {
		return fmt.Errorf("peak concurrency %d: want at most 64 (the stream limit) and well above 1", peak)
	}
	return nil
}
