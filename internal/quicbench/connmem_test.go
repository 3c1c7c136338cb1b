//go:build linux

package quicbench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
)

// What one idle connection costs this side, server and client apart: the
// other ends run in a child process so that only this side is counted.
// The bounds are what the fork now needs with a margin of about a third
// (third_party/README.md, change 5, has the figures): a change that makes
// every connection keep more fails here before it shows in scale.sh.
const (
	idleConns = 200
	// Heap in use per connection once it is idle.
	maxIdleHeapServer = 23 << 10
	maxIdleHeapClient = 23 << 10
	// Goroutines per idle connection: its run loop (the send queue's
	// writer runs only while there are packets to write).
	maxIdleGoroutines = 1
)

// The children of this test: envConns connections to or from the parent.
const (
	envConns       = "QUICBENCH_CONNS"
	roleIdleDialer = "idle-dialer" // dials the parent envConns times
	roleIdleServer = "idle-server" // listens, prints its address, accepts
)

var connProfile = flag.String("quicbench.connprofile", "",
	"write the heap profile of TestIdleConnMemory's side to `NAME`.server and NAME.client (every allocation sampled)")

// TestIdleConnMemory opens idleConns connections between this process and
// a child, checks that each carries a datagram both ways, lets them settle
// and measures what this process keeps for them: heap in use after a
// collection, goroutines, goroutine stacks, and CPU over an idle window
// that holds one keep-alive round.
func TestIdleConnMemory(t *testing.T) {
	for _, side := range []string{"server", "client"} {
		t.Run(side, func(t *testing.T) {
			if *connProfile != "" {
				defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
				runtime.MemProfileRate = 1
			}
			m := measureIdle(t, side == "server")
			t.Logf("%s: %d connections: %.1f KiB heap, %.2f goroutines, %.1f KiB stack, %.1f heap objects per connection; idle CPU %.3f%% of a core per 1,000 connections",
				side, idleConns, m.heap/1024, m.goroutines, m.stack/1024, m.objects, m.cpuPer1000)
			if *connProfile != "" {
				f, err := os.Create(*connProfile + "." + side)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := m.profile.WriteTo(f, 0); err != nil {
					t.Fatal(err)
				}
			}
			bound := map[bool]float64{true: maxIdleHeapServer, false: maxIdleHeapClient}[side == "server"]
			// The race detector's own memory is counted in the heap: there
			// only the goroutines are checked.
			if !raceEnabled && m.heap > bound {
				t.Errorf("an idle %s connection keeps %.1f KiB of heap, more than %.0f KiB", side, m.heap/1024, bound/1024)
			}
			if m.goroutines > maxIdleGoroutines+0.05 {
				t.Errorf("an idle %s connection keeps %.2f goroutines, more than %d", side, m.goroutines, maxIdleGoroutines)
			}
		})
	}
}

type idleFigures struct {
	heap, goroutines, stack, objects float64 // per connection
	cpuPer1000                       float64 // % of a core
	profile                          *pprof.Profile
}

type memPoint struct{ heap, stack, objects uint64 }

func memNow() memPoint {
	for range 4 {
		runtime.GC()
		time.Sleep(50 * time.Millisecond)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memPoint{heap: ms.HeapAlloc, stack: ms.StackInuse, objects: ms.HeapObjects}
}

// measureIdle opens the connections with this process as server (the
// child dials) or as client (this process dials the child) and measures.
func measureIdle(t *testing.T, server bool) idleFigures {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		conns []*quic.Conn
		stop  func()
	)
	// The baseline: the transport (and listener) exist, no connection yet.
	var ep *endpoint
	var tr *quic.Transport
	if server {
		var err error
		if ep, err = listen(); err != nil {
			t.Fatal(err)
		}
		defer ep.close()
	} else {
		udp, err := listenUDP()
		if err != nil {
			t.Fatal(err)
		}
		tr = &quic.Transport{Conn: udp}
		defer udp.Close()
		defer tr.Close()
	}
	g0 := runtime.NumGoroutine()
	m0 := memNow()
	if server {
		stop = startChild(t, roleIdleDialer, ep.udp.LocalAddr().String(), nil)
		for range idleConns {
			c, err := ep.ln.Accept(ctx)
			if err != nil {
				t.Fatal("the child did not dial:", err)
			}
			conns = append(conns, c)
		}
	} else {
		addrc := make(chan string, 1)
		stop = startChild(t, roleIdleServer, "", addrc)
		var addr string
		select {
		case addr = <-addrc:
		case <-ctx.Done():
			t.Fatal("the child printed no address")
		}
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, cliTLS := tlsConfigs()
		for range idleConns {
			c, err := tr.Dial(ctx, ua, cliTLS, quicConfig())
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	defer stop()
	defer func() {
		for _, c := range conns {
			c.CloseWithError(0, "")
		}
	}()
	// Each connection carries a datagram both ways: the handshake is over
	// at both ends (the client saw HANDSHAKE_DONE, the server its ACK).
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for _, c := range conns {
		wg.Go(func() {
			if server {
				errs <- echoOnce(ctx, c)
			} else {
				errs <- pingOnce(ctx, c)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Settle: the last ACKs, and the retirement of the handshake's
	// connection IDs three PTOs after it (milliseconds on loopback).
	time.Sleep(300 * time.Millisecond)
	m1 := memNow()
	g1 := runtime.NumGoroutine()
	u0 := snapshot()
	// One keep-alive round (quicConfig's KeepAlivePeriod is 5 s) plus the
	// ACKs: this is the idle connection's steady cost.
	const idle = 11 * time.Second
	time.Sleep(idle)
	cpu := snapshot().since(u0).cpu
	for _, c := range conns {
		if err := c.Context().Err(); err != nil {
			t.Fatalf("a connection closed while idle: %v", context.Cause(c.Context()))
		}
	}
	n := float64(len(conns))
	f := idleFigures{
		heap:       (float64(m1.heap) - float64(m0.heap)) / n,
		goroutines: float64(g1-g0) / n,
		stack:      (float64(m1.stack) - float64(m0.stack)) / n,
		objects:    (float64(m1.objects) - float64(m0.objects)) / n,
		cpuPer1000: 100 * cpu.Seconds() / idle.Seconds() * 1000 / n,
	}
	if *connProfile != "" {
		runtime.GC()
		f.profile = pprof.Lookup("heap")
	}
	return f
}

// echoOnce waits for one datagram on c and sends it back.
func echoOnce(ctx context.Context, c *quic.Conn) error {
	d, err := c.ReceiveDatagram(ctx)
	if err != nil {
		return err
	}
	return c.SendDatagram(d)
}

// pingOnce sends a datagram on c and waits for it to come back.
func pingOnce(ctx context.Context, c *quic.Conn) error {
	ping := []byte("ping")
	for {
		if err := c.SendDatagram(ping); err != nil {
			return err
		}
		// Datagrams may be lost: send again until one comes back.
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		d, err := c.ReceiveDatagram(rctx)
		cancel()
		if err == nil {
			if string(d) != "ping" {
				return fmt.Errorf("echo %q, want ping", d)
			}
			return nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
}

// startChild starts the test binary as a child in role; addrc, if not
// nil, receives the address it prints. stop ends the child (closing its
// stdin tells it to exit) and waits for it, killing it if it hangs.
func startChild(t *testing.T, role, addr string, addrc chan<- string) (stop func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envPeer+"="+role, envAddr+"="+addr, envConns+"="+strconv.Itoa(idleConns))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "addr "); ok && addrc != nil {
				addrc <- a
				addrc = nil
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			stdin.Close()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		})
	}
}

// runIdlePeer is the child of TestIdleConnMemory: it dials the parent
// envConns times (roleIdleDialer) or accepts that many connections
// (roleIdleServer), answers each connection's first datagram (dialer) or
// echoes it (server), and holds them until its stdin closes.
func runIdlePeer(role, addr string) error {
	time.AfterFunc(5*time.Minute, func() { os.Exit(3) })
	n, err := strconv.Atoi(os.Getenv(envConns))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var conns []*quic.Conn
	switch role {
	case roleIdleDialer:
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		udp, err := listenUDP()
		if err != nil {
			return err
		}
		defer udp.Close()
		tr := &quic.Transport{Conn: udp}
		defer tr.Close()
		_, cliTLS := tlsConfigs()
		for range n {
			c, err := tr.Dial(ctx, ua, cliTLS, quicConfig())
			if err != nil {
				return err
			}
			conns = append(conns, c)
			go pingOnce(ctx, c)
		}
	case roleIdleServer:
		ep, err := listen()
		if err != nil {
			return err
		}
		defer ep.close()
		fmt.Printf("addr %s\n", ep.udp.LocalAddr())
		for range n {
			c, err := ep.ln.Accept(ctx)
			if err != nil {
				return err
			}
			conns = append(conns, c)
			go func() {
				// Every ping the parent sends again is answered too.
				for echoOnce(ctx, c) == nil {
				}
			}()
		}
	}
	io.Copy(io.Discard, os.Stdin) // until the parent is done
	for _, c := range conns {
		c.CloseWithError(0, "")
	}
	return nil
}
