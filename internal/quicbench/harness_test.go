//go:build linux

package quicbench

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
)

// payloadSize is a full tunnel packet: the overlay's MTU, and the QUIC
// packet that carries it is InitialPacketSize bytes.
const (
	payloadSize = 1392
	packetSize  = payloadSize + 40
	alpn        = "quicbench"
)

func tlsConfigs() (server, client *tls.Config) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"quicbench"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}}
	client = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpn}, ServerName: "quicbench"}
	return server, client
}

func quicConfig() *quic.Config {
	return &quic.Config{
		EnableDatagrams:         true,
		InitialPacketSize:       packetSize,
		DisablePathMTUDiscovery: true,
		MaxIdleTimeout:          30 * time.Second,
		KeepAlivePeriod:         5 * time.Second,
	}
}

// listenUDP opens a real loopback UDP socket with large buffers, as the
// node does.
func listenUDP() (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	c.SetReadBuffer(7 << 20)
	c.SetWriteBuffer(7 << 20)
	return c, nil
}

// endpoint is one side: its transport and its connection.
type endpoint struct {
	udp  *net.UDPConn
	tr   *quic.Transport
	ln   *quic.Listener
	conn *quic.Conn
}

func (e *endpoint) close() {
	if e.conn != nil {
		e.conn.CloseWithError(0, "")
	}
	if e.ln != nil {
		e.ln.Close()
	}
	e.tr.Close()
	e.udp.Close()
}

func listen() (*endpoint, error) {
	udp, err := listenUDP()
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	srvTLS, _ := tlsConfigs()
	ln, err := tr.Listen(srvTLS, quicConfig())
	if err != nil {
		udp.Close()
		return nil, err
	}
	return &endpoint{udp: udp, tr: tr, ln: ln}, nil
}

func dial(ctx context.Context, addr string) (*endpoint, error) {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	udp, err := listenUDP()
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	_, cliTLS := tlsConfigs()
	conn, err := tr.Dial(ctx, ua, cliTLS, quicConfig())
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	return &endpoint{udp: udp, tr: tr, conn: conn}, nil
}

// pair connects two endpoints in this process.
func pair(ctx context.Context) (srv, cli *endpoint, err error) {
	srv, err = listen()
	if err != nil {
		return nil, nil, err
	}
	cli, err = dial(ctx, srv.udp.LocalAddr().String())
	if err != nil {
		srv.close()
		return nil, nil, err
	}
	if srv.conn, err = srv.ln.Accept(ctx); err != nil {
		srv.close()
		cli.close()
		return nil, nil, err
	}
	if !srv.conn.ConnectionState().SupportsDatagrams.Remote || !cli.conn.ConnectionState().SupportsDatagrams.Remote {
		srv.close()
		cli.close()
		return nil, nil, errors.New("datagrams not negotiated")
	}
	return srv, cli, nil
}

// pattern is the body of every datagram after its 8-byte sequence number,
// so the receiver can check every byte without costing the sender more
// than a copy (a tunnel's device read costs at least that).
var pattern = func() []byte {
	p := make([]byte, payloadSize-8)
	for i := range p {
		p[i] = byte(i*7 + i>>8)
	}
	return p
}()

// newPair connects two endpoints in this process for tb and closes them
// when tb ends.
func newPair(tb testing.TB) (srv, cli *endpoint) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, cli, err := pair(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.close(); srv.close() })
	return srv, cli
}

// fill writes datagram number seq into b.
func fill(b []byte, seq uint64) {
	binary.LittleEndian.PutUint64(b, seq)
	copy(b[8:], pattern)
}

// check reports whether b is a datagram that fill wrote.
func check(b []byte) bool {
	return len(b) == payloadSize && bytes.Equal(b[8:], pattern)
}

// receiver counts the datagrams that arrive on a connection, and the ones
// that arrived damaged.
type receiver struct {
	got, bad atomic.Uint64
	last     atomic.Int64 // when the last one arrived, in ns since epoch
	done     chan struct{}
}

// epoch is this process's time origin for receiver.last.
var epoch = time.Now()

// now is the time since epoch, from the monotonic clock.
func now() time.Duration { return time.Since(epoch) }

// oldAPI makes the benchmarks use ReceiveDatagram, which returns a new
// slice per datagram, instead of ReceiveDatagrams, which copies into the
// caller's buffers.
var oldAPI = flag.Bool("quicbench.oldapi", false, "receive with ReceiveDatagram instead of ReceiveDatagrams")

// recvBatch is how many datagrams one ReceiveDatagrams call takes at most:
// the overlay's device batch.
const recvBatch = 64

func receive(conn *quic.Conn) *receiver { return receiveWith(conn, *oldAPI) }

// receiveWith drains conn's datagrams in a goroutine that ends with the
// connection, with ReceiveDatagram if old is set, else ReceiveDatagrams.
func receiveWith(conn *quic.Conn, old bool) *receiver {
	r := &receiver{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		ctx := context.Background()
		if old {
			for {
				d, err := conn.ReceiveDatagram(ctx)
				if err != nil {
					return
				}
				r.count(d)
			}
		}
		bufs := make([][]byte, recvBatch)
		sizes := make([]int, recvBatch)
		for i := range bufs {
			bufs[i] = make([]byte, 1500)
		}
		for {
			n, err := conn.ReceiveDatagrams(ctx, bufs, sizes)
			if err != nil {
				return
			}
			for i := range n {
				r.count(bufs[i][:sizes[i]])
			}
		}
	}()
	return r
}

func (r *receiver) count(d []byte) {
	if !check(d) {
		r.bad.Add(1)
	}
	r.last.Store(int64(now()))
	r.got.Add(1)
}

// waitFor waits until at least n datagrams arrived, or until none arrived
// for quiet, and returns how many did.
func (r *receiver) waitFor(n uint64, quiet time.Duration) uint64 {
	last, lastAt := r.got.Load(), time.Now()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		g := r.got.Load()
		if g >= n {
			return g
		}
		if g != last {
			last, lastAt = g, time.Now()
		} else if time.Since(lastAt) > quiet {
			return g
		}
		time.Sleep(time.Millisecond)
	}
	return r.got.Load()
}

// span is the time from start (since epoch) to the last arrival.
func (r *receiver) span(start time.Duration) time.Duration {
	return max(time.Duration(r.last.Load())-start, 0)
}

// send sends n datagrams numbered from seq on.
func send(conn *quic.Conn, seq uint64, n int) error {
	buf := make([]byte, payloadSize)
	for i := range n {
		fill(buf, seq+uint64(i))
		if err := conn.SendDatagram(buf); err != nil {
			return err
		}
	}
	return nil
}

// memProfile, when set, writes allocation profiles NAME.start and
// NAME.end around every measured run (the child's get NAME.child.*), for
// go tool pprof -sample_index=alloc_objects -diff_base NAME.start NAME.end.
// Set MemProfileRate=1 (-test.memprofilerate 1) to see every allocation.
var memProfile = flag.String("quicbench.memprofile", "", "write allocation profiles around measured runs to `NAME`.start and .end")

func writeMemProfile(name string) {
	runtime.GC() // the profile counts allocations up to the last GC
	f, err := os.Create(name)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		panic(err)
	}
}

// usage is a snapshot of what this process has spent.
type usage struct {
	mallocs uint64
	cpu     time.Duration
}

func snapshot() usage {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return usage{
		mallocs: ms.Mallocs,
		cpu:     time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
	}
}

func (u usage) since(v usage) usage {
	return usage{mallocs: u.mallocs - v.mallocs, cpu: u.cpu - v.cpu}
}

func (u usage) String() string {
	return fmt.Sprintf("%d mallocs, %v CPU", u.mallocs, u.cpu)
}
